"""Tiny random-weight FLUX variants (schnell, Depth/Canny, Fill, Kontext) as a user would bring them:
diffusers pipeline folders with their own transformer config, scheduler, VAE and tiny local text
encoders (no hub), plus the way each stock pipeline calls its transformer."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ddit_export.families.flux import FLUX, FLUX_TINY_CONFIG, KONTEXT_KEY, KONTEXT_PIPELINE
from ddit_export.pipelines.flux import FLUX_SHIFT

# FLUX.1-Depth/Canny: latent + control latent (16 + 16 channels); Fill: latent + masked-image latent + the
# 8x8 mask folded to the latent grid (16 + 16 + 64): in_channels = 4 x that, out_channels = 64 for both.
CONFIGS = {
    "schnell": dict(FLUX_TINY_CONFIG, guidance_embeds=False),
    "control": dict(FLUX_TINY_CONFIG, in_channels=128, out_channels=64),
    "fill": dict(FLUX_TINY_CONFIG, in_channels=384, out_channels=64),
    "kontext": dict(FLUX_TINY_CONFIG),
}
PIPELINES = {"schnell": "FluxPipeline", "control": "FluxControlPipeline", "fill": "FluxFillPipeline",
             "kontext": KONTEXT_PIPELINE}
GRID_CHANNELS = {"control": 16, "fill": 80}  # condition_latent channels
HEIGHT = WIDTH = 64  # latent 8 x 8
TEXT_LEN = 8
SIZES = (2, 4)


def tiny_transformer(name: str, seed: int = 0):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**CONFIGS[name]).eval()
    return FLUX.mark_pipeline(model, PIPELINES[name])


def scheduler(name: str):
    """FLUX.1-schnell's scheduler (no shift) or FLUX.1-dev's (resolution-dependent shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if name == "schnell":
        return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, **FLUX_SHIFT)


def pipeline_folder(root: Path, name: str, vae, variant: str | None = None) -> Path:
    """A diffusers pipeline folder of the variant: transformer, VAE, scheduler, tiny CLIP + T5 and tokenizers."""
    from tests.commands.test_generate_cmd import tiny_text_encoders

    tiny_text_encoders(root)
    transformer = tiny_transformer(name)
    transformer.save_pretrained(root / "transformer", variant=variant)
    vae.save_pretrained(root / "vae")
    scheduler(name).save_pretrained(root / "scheduler")
    index = json.loads((root / "model_index.json").read_text())
    index.update(_class_name=PIPELINES[name], transformer=["diffusers", "FluxTransformer2DModel"],
                 vae=["diffusers", "AutoencoderKL"])
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def stock_inputs(name: str, latent_shape, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random grid conditioning of the variant (what the engines take), keyed by engine input name."""
    gen = torch.Generator().manual_seed(seed + 100)
    b, _, h, w = latent_shape
    if name in GRID_CHANNELS:
        return {"condition_latent": torch.randn((b, GRID_CHANNELS[name], h, w), generator=gen)}
    if name == "kontext":
        return {"reference_latent": torch.randn(latent_shape, generator=gen)}
    return {}


def diffusers_forward(transformer, latent, conditioning: dict, grid: dict) -> torch.Tensor:
    """The variant's transformer called exactly as its stock pipeline calls it (packed tokens, ids), unpacked."""
    shape = tuple(latent.shape)
    hidden = FLUX.pack(latent, 2)
    img_ids = FLUX.image_ids(2, shape)
    if "condition_latent" in grid:  # FluxControlPipeline / FluxFillPipeline: torch.cat(..., dim=2) of packed
        hidden = torch.cat([hidden, FLUX.pack(grid["condition_latent"], 2)], dim=2)
    if "reference_latent" in grid:  # FluxKontextPipeline: torch.cat(..., dim=1), ids with first coordinate 1
        hidden = torch.cat([hidden, FLUX.pack(grid["reference_latent"], 2)], dim=1)
        ref_ids = FLUX.image_ids(2, shape)
        ref_ids[:, 0] = 1
        img_ids = torch.cat([img_ids, ref_ids])
    out = transformer(hidden_states=hidden, encoder_hidden_states=conditioning["encoder_hidden_states"],
                      pooled_projections=conditioning["pooled_projections"], timestep=conditioning["timestep"],
                      guidance=conditioning.get("guidance"), img_ids=img_ids.float(),
                      txt_ids=torch.zeros(TEXT_LEN, 3), return_dict=False)[0]
    tokens = (shape[-2] // 2) * (shape[-1] // 2)  # Kontext's pipeline keeps the latent's tokens only
    return FLUX.unpack(out[:, :tokens], 2, shape)


def is_kontext(model) -> bool:
    return model.config.get(KONTEXT_KEY) == KONTEXT_PIPELINE
