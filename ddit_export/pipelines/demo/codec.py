"""Exact, fixed map between demo images and the demo model's latent: the pixels themselves.

A 32x32 RGB image in [0, 1] becomes a 3 x 32 x 32 latent in [-1, 1] (the demo transformer has
in_channels 12 = 3 channels x 2 x 2). No VAE and no padding channels: every latent channel carries
image content, so a size-8 token holds 3 * 8 * 8 = 192 features. 32 is divisible by the largest DDiT
patch 8; round trips are exact up to float rounding of the affine map, which is exact for dyadic values.

`encode(images, channels=16)` gives the padded form the demo's first training phase uses (FLUX's 16
VAE channels, channels 3-15 zero; tools/train_demo.py). Zero channels still get noised, so in that
form 13 of 16 channels carry pure noise a coarse token cannot pass through: 1024 features per size-8
token against a hidden width of 128. The shipped model is narrowed to the three pixel channels.
"""

from __future__ import annotations

import numpy as np
import torch

IMAGE_SIZE = 32
LATENT_CHANNELS = 3  # the shipped model's latent: the RGB pixels
PADDED_CHANNELS = 16  # FLUX's VAE channel count, used by the first training phase only


def encode(images: torch.Tensor, channels: int = LATENT_CHANNELS) -> torch.Tensor:
    """B x 3 x H x W in [0, 1] -> B x `channels` x H x W latent in [-1, 1] (extra channels zero)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"the demo codec maps B x 3 x H x W RGB images (got shape {tuple(images.shape)})")
    if channels < 3:
        raise ValueError(f"the demo latent needs at least the 3 pixel channels (asked for {channels})")
    pixels = images * 2 - 1
    if channels == 3:
        return pixels
    return torch.cat([pixels, pixels.new_zeros(pixels.shape[0], channels - 3, *pixels.shape[2:])], 1)


def decode(latent: torch.Tensor) -> torch.Tensor:
    """B x C x H x W latent (its first 3 channels are the pixels) -> B x 3 x H x W image in [0, 1]."""
    return ((latent[:, :3].float() + 1) / 2).clamp(0, 1)


def to_pil(image: torch.Tensor, scale: int = 8):
    """A 3 x H x W image in [0, 1] as a PIL image, upscaled (nearest) so the 32x32 pixels stay visible."""
    from PIL import Image

    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
