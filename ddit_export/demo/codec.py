"""Exact, fixed packing between demo images and the FLUX family's 16-channel latent.

A 32x32 RGB image in [0, 1] becomes a 16 x 32 x 32 latent: channels 0-2 hold the pixels mapped to
[-1, 1], channels 3-15 are zero. No VAE: the latent grid is the pixel grid, 32 is divisible by the
largest DDiT patch 8, and decoding just reads the three pixel channels back (so round trips are exact
up to float rounding of the affine map, which is exact for dyadic values).
"""

from __future__ import annotations

import torch

IMAGE_SIZE = 32
LATENT_CHANNELS = 16
PIXEL_CHANNELS = 3


def encode(images: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W in [0, 1] -> B x 16 x H x W latent."""
    b, c, h, w = images.shape
    if c != PIXEL_CHANNELS:
        raise ValueError(f"the demo codec packs RGB images (got {c} channels)")
    latent = images.new_zeros(b, LATENT_CHANNELS, h, w)
    latent[:, :PIXEL_CHANNELS] = images * 2 - 1
    return latent


def decode(latent: torch.Tensor) -> torch.Tensor:
    """B x 16 x H x W latent -> B x 3 x H x W image, clamped to [0, 1]."""
    return ((latent[:, :PIXEL_CHANNELS].float() + 1) / 2).clamp(0, 1)
