"""Exact, fixed map between demo images and the demo model's latent: the pixels themselves.

A 32x32 RGB image in [0, 1] becomes a 3 x 32 x 32 latent in [-1, 1] (the demo transformer has
in_channels 12 = 3 channels x 2 x 2, so FLUX's packing gives 12 features per base token). No VAE and
no padding channels: every latent channel carries image content, so a coarse token of size 8 holds
3 * 8 * 8 = 192 features, what the demo's hidden width of 192 can carry. (An earlier demo padded the
pixels to FLUX's 16 VAE channels; 13 channels of pure noise, 1024 features per size-8 token, were more
than its 128-wide tokens could pass through, and its coarse sizes could not be distilled well.)
32 is divisible by the largest DDiT patch 8; round trips are exact up to float rounding of the affine
map, which is exact for dyadic values.
"""

from __future__ import annotations

import torch

IMAGE_SIZE = 32
LATENT_CHANNELS = 3


def encode(images: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W in [0, 1] -> B x 3 x H x W latent in [-1, 1]."""
    if images.dim() != 4 or images.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"the demo codec maps B x 3 x H x W RGB images (got shape {tuple(images.shape)})")
    return images * 2 - 1


def decode(latent: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W latent -> B x 3 x H x W image, clamped to [0, 1]."""
    return ((latent.float() + 1) / 2).clamp(0, 1)
