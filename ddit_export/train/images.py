"""Data source (a): a folder of images, encoded once with the model's VAE into clean latents.

Images are resized to cover the training size and center-cropped (no distortion), mapped to
[-1, 1] and encoded with the VAE's posterior mean (deterministic, so a resumed run sees the same
latents). FLUX normalises VAE latents as `(latent - shift_factor) * scaling_factor`, which is what
the transformer was trained on. A prompt is read from `NAME.txt` beside `NAME.png`; an image without
one gets synthetic conditioning seeded from its file name (it must still differ per image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import IMAGE_SUFFIXES


@dataclass
class ImageFolder:
    latents: torch.Tensor  # N x C x h x w, normalised like the pipeline's
    prompts: list[str]  # the caption, or the file name for images without one
    captioned: list[bool]


def image_files(folder) -> list[Path]:
    return sorted(p for p in Path(folder).expanduser().iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def resolve_vae(vae: str | None, model: str) -> Path:
    """A folder holding an AutoencoderKL: `--vae` (a VAE or pipeline folder), else the model's pipeline."""
    candidates = [vae] if vae else [model]
    for candidate in candidates:
        path = Path(candidate).expanduser()
        if (path / "vae" / "config.json").is_file():
            return path / "vae"
        if (path / "config.json").is_file():
            return path
    if vae:
        raise ValueError(f"--vae {vae} holds no VAE (expected config.json, or vae/config.json in a pipeline folder)")
    raise ValueError("--images needs a VAE: pass --vae (a VAE folder or a diffusers pipeline folder), "
                     "or a pipeline folder as --model")


def load_rgb(path: Path, height: int, width: int) -> torch.Tensor:
    """`3 x height x width` in [-1, 1]: scaled to cover, then center-cropped."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        scale = max(width / img.width, height / img.height)
        size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC)
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        img = img.crop((left, top, left + width, top + height))
        pixels = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)
    return pixels / 127.5 - 1.0


@torch.no_grad()
def encode_image_folder(folder, vae_path, family, height: int, width: int, batch_size: int = 4,
                        device="cpu") -> ImageFolder:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_path).to(device).eval()  # fp32: encoding is cheap and done once
    cfg = vae.config
    if cfg.latent_channels != family.latent_channels:
        raise ValueError(f"the VAE in {vae_path} makes {cfg.latent_channels}-channel latents; "
                         f"{family.name} needs {family.latent_channels}")
    files = image_files(folder)
    expected = tuple(family.latent_shape(1, height, width)[1:])
    latents = []
    for start in range(0, len(files), batch_size):
        pixels = torch.stack([load_rgb(f, height, width) for f in files[start:start + batch_size]]).to(device)
        mean = vae.encode(pixels).latent_dist.mode()
        latents.append(((mean - (cfg.shift_factor or 0.0)) * cfg.scaling_factor).float().cpu())
    latents = torch.cat(latents)
    if tuple(latents.shape[1:]) != expected:
        raise ValueError(f"the VAE in {vae_path} encodes {height}x{width} images to {list(latents.shape[1:])}; "
                         f"{family.name} expects {list(expected)} (is it the model's VAE?)")
    captions = [f.with_suffix(".txt") for f in files]
    prompts = [c.read_text(encoding="utf-8").strip() if c.is_file() else f.name for f, c in zip(files, captions)]
    return ImageFolder(latents=latents, prompts=prompts, captioned=[c.is_file() for c in captions])
