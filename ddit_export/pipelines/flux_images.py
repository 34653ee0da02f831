"""Conditioning on the latent grid for the FLUX variants (docs/variants.md), made the way their stock
pipelines make it, with the pipeline folder's VAE:

- FLUX.1-Depth/Canny (`FluxControlPipeline`): the control image, VAE-encoded (sampled), shifted and scaled.
- FLUX.1-Fill (`FluxFillPipeline`): the masked image's latent (16 channels) then the mask folded to the
  latent grid (vae_scale^2 = 64 channels), from the pipeline's own `prepare_mask_latents`.
- FLUX.1-Kontext (`FluxKontextPipeline`): the reference image resized to the engines' size, VAE-encoded
  (the distribution's mode, as the pipeline does), shifted and scaled.

The stock pipeline's own helpers run on an instance holding only the VAE. A model without a VAE here
(a transformer folder, a preset) gets SYNTHETIC grid inputs seeded from the prompt, like its text
embeddings (runtime/conditioning.py): fine for latency and schedules, not for images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..families.flux import CONDITION_LATENT, FLUX, REFERENCE_LATENT, variant_of
from ..runtime.conditioning import prompt_seed

IMAGE_FLAGS = {"FluxControlPipeline": ("image",), "FluxFillPipeline": ("image", "mask"),
               "FluxKontextPipeline": ("image",)}
WHAT_IMAGE_IS = {"FluxControlPipeline": "the control image (depth map, edges)",
                 "FluxFillPipeline": "the image to fill, with --mask (white = repaint)",
                 "FluxKontextPipeline": "the reference image to edit"}


def check_images(config, image: str | None, mask: str | None, has_vae: bool) -> str:
    """The model's stock pipeline name, after refusing image flags it does not take (one line each)."""
    pipeline = variant_of(config)
    takes = IMAGE_FLAGS.get(pipeline, ())
    for flag, value in (("image", image), ("mask", mask)):
        if value is not None and flag not in takes:
            raise ValueError(f"--{flag} does not apply to these engines ({pipeline} model); "
                             f"{'it takes ' + ', '.join('--' + f for f in takes) if takes else 'drop it'}")
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError(f"--{flag} {value} is not a file; pass an image file (PNG, JPEG, ...)")
    if takes and has_vae and image is None:
        raise ValueError(f"these {pipeline} engines need --image: {WHAT_IMAGE_IS[pipeline]}")
    if pipeline == "FluxFillPipeline" and image is not None and mask is None:
        raise ValueError("FLUX.1-Fill engines need --mask with --image (white where the image is repainted)")
    if image is not None and not has_vae:
        raise ValueError("--image needs the model folder's VAE (vae/): export from the diffusers pipeline folder")
    return pipeline


def synthetic_grid_inputs(shapes: dict, prompt: str) -> dict[str, torch.Tensor]:
    """Deterministic unit-normal grid inputs seeded from the prompt (models without a VAE here)."""
    gen = torch.Generator().manual_seed(prompt_seed(prompt) + 1)
    return {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}


@torch.no_grad()
def encoded_grid_inputs(pipeline: str, folder: Path, shapes: dict, image: str, mask: str | None, seed: int,
                        device="cpu", variant: str | None = None) -> dict[str, torch.Tensor]:
    """The grid inputs the stock ``pipeline`` makes from ``image`` (and ``mask``) with ``folder``'s VAE."""
    import diffusers
    from diffusers import AutoencoderKL
    from PIL import Image

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", variant=variant).to(device)
    stock = getattr(diffusers, pipeline)(scheduler=None, vae=vae, text_encoder=None, tokenizer=None,
                                         text_encoder_2=None, tokenizer_2=None, transformer=None)
    batch, _, h, w = next(iter(shapes.values()))
    height, width = h * FLUX.vae_scale, w * FLUX.vae_scale
    picture = Image.open(Path(image).expanduser()).convert("RGB")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    cfg = vae.config
    if pipeline == "FluxFillPipeline":
        pixels = stock.image_processor.preprocess(picture, height=height, width=width)
        holes = stock.mask_processor.preprocess(Image.open(Path(mask).expanduser()), height=height, width=width)
        masked = (pixels * (1 - holes)).to(device=device, dtype=vae.dtype)
        packed_mask, packed_masked = stock.prepare_mask_latents(holes, masked, batch, cfg.latent_channels, 1, height,
                                                                width, vae.dtype, device, gen)
        grid = torch.cat([FLUX.unpack(packed_masked, FLUX.base_patch, (batch, cfg.latent_channels, h, w)),
                          FLUX.unpack(packed_mask, FLUX.base_patch, (batch, stock.vae_scale_factor**2, h, w))], dim=1)
        return {CONDITION_LATENT: grid}
    if pipeline == "FluxControlPipeline":
        pixels = stock.prepare_image(picture, width, height, batch, 1, device, vae.dtype)
        latent = vae.encode(pixels).latent_dist.sample(generator=gen)
        return {CONDITION_LATENT: (latent - cfg.shift_factor) * cfg.scaling_factor}
    # Kontext: the engines' static geometry fixes the reference size (the pipeline's _auto_resize=False).
    resized = stock.image_processor.resize(picture, height, width)
    pixels = stock.image_processor.preprocess(resized, height, width).to(device=device, dtype=vae.dtype)
    latent = vae.encode(pixels).latent_dist.mode()
    return {REFERENCE_LATENT: ((latent - cfg.shift_factor) * cfg.scaling_factor).expand(batch, -1, -1, -1)}
