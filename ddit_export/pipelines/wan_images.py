"""Image-to-video conditioning for Wan (docs/variants-wan.md), made the way `WanImageToVideoPipeline` makes it,
with the pipeline folder's own components:

- `condition_latent` (engine input on the latent grid): the frame mask (4 channels: the first latent frame's
  four video frames, and the last's with --last-image) then the VAE latent of the image followed by zero
  frames (16 channels), normalised by the VAE's latents_mean/std: the pipeline's own `prepare_latents`.
- `encoder_hidden_states_image` (Wan 2.1 I2V / FLF2V only, `image_dim` set): the CLIP image encoder's
  penultimate hidden states, the pipeline's own `encode_image` (FLF2V: first and last frame).

A model without a VAE here (a transformer folder, a preset) gets SYNTHETIC inputs seeded from the prompt,
like its text embeddings (runtime/conditioning.py): fine for latency and schedules, not for videos.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..families.wan import WAN
from ..runtime.conditioning import prompt_seed

CONDITION = "condition_latent"
IMAGE_EMBEDS = "encoder_hidden_states_image"


def is_image_to_video(config) -> bool:
    return WAN.condition_channels(config) > 0


def check_images(manifest, image: str | None, last_image: str | None, folder: Path | None) -> None:
    """Refuse image flags the engines' model does not take, or lacks, in one line (before the engines load)."""
    config = manifest["model"]["config"]
    i2v = is_image_to_video(config)
    for flag, value in (("image", image), ("last-image", last_image)):
        if value is not None and not i2v:
            raise ValueError(f"--{flag} does not apply to these text-to-video Wan engines (in_channels "
                             f"{config['in_channels']}; Wan 2.2 TI2V's image-to-video mode is not supported); drop it")
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError(f"--{flag} {value} is not a file; pass an image file (PNG, JPEG, ...)")
    images = WAN.image_embeds(config)
    if last_image is not None and images and images[0] == 1:
        raise ValueError("--last-image needs a first-last-frame model (Wan 2.1 FLF2V, pos_embed_seq_len set); these "
                         "engines embed one image")
    if folder is None:
        if image is not None:
            raise ValueError("--image needs the model folder's VAE (vae/): export from the diffusers pipeline folder")
        return
    if i2v and image is None:
        raise ValueError("these image-to-video Wan engines need --image: the video's first frame")
    if images and images[0] == 2 and last_image is None:
        raise ValueError("these first-last-frame Wan engines (FLF2V) need --last-image: the video's last frame")
    if images and not (folder / "image_encoder" / "config.json").is_file():
        raise ValueError(f"{folder} has no image_encoder/ (CLIP): these Wan I2V engines need its image embeddings")


def synthetic_inputs(shapes: dict, prompt: str) -> dict[str, torch.Tensor]:
    """Deterministic unit-normal image inputs seeded from the prompt (models without a VAE here)."""
    gen = torch.Generator().manual_seed(prompt_seed(prompt) + 1)
    return {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}


@torch.no_grad()
def encoded_inputs(folder: Path, manifest, shapes: dict, image: str, last_image: str | None,
                   device="cpu") -> dict[str, torch.Tensor]:
    """The inputs WanImageToVideoPipeline makes from ``image`` (and ``last_image``) with ``folder``'s VAE and CLIP."""
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    # Only the image side is loaded; the engines replace the transformer(s), the text side is encoded apart.
    stock = WanImageToVideoPipeline.from_pretrained(folder, transformer=None, transformer_2=None, text_encoder=None,
                                                    tokenizer=None).to(device)
    request = manifest["request"]
    frames, height, width = int(request["frames"]), int(request["height"]), int(request["width"])
    batch, channels, *grid = shapes[CONDITION]
    first = Image.open(Path(image).expanduser()).convert("RGB")
    last = Image.open(Path(last_image).expanduser()).convert("RGB") if last_image else None
    inputs = {}
    if IMAGE_EMBEDS in shapes:
        embeds = stock.encode_image(first if last is None else [first, last], device)
        if tuple(embeds.shape[1:]) != tuple(shapes[IMAGE_EMBEDS][1:]):
            raise ValueError(f"{folder}'s image encoder gives {tuple(embeds.shape[1:])} embeddings; the engines take "
                             f"{tuple(shapes[IMAGE_EMBEDS][1:])}")
        inputs[IMAGE_EMBEDS] = embeds.repeat(batch, 1, 1)
    pixels = stock.video_processor.preprocess(first, height=height, width=width).to(device, torch.float32)
    last_pixels = None
    if last is not None:
        last_pixels = stock.video_processor.preprocess(last, height=height, width=width).to(device, torch.float32)
    z = stock.vae.config.z_dim
    # latents given: prepare_latents draws no noise (generate draws it with the seed, as the pipeline would)
    _, condition = stock.prepare_latents(pixels, batch, z, height, width, frames, torch.float32, device, None,
                                         torch.zeros(batch, z, *grid), last_pixels)
    inputs[CONDITION] = condition
    return inputs
