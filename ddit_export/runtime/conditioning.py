"""Text conditioning for engines run without a diffusers pipeline.

- The manifest's model is a diffusers pipeline folder with text encoders: the prompt is encoded
  with that pipeline's own `encode_prompt` (CLIP pooled + T5 states for FLUX), padded to the
  engines' static text length.
- Otherwise (the tiny model, a transformer-only folder or hub id): SYNTHETIC conditioning.
  Deterministic unit-normal embeddings drawn from a generator seeded with the first 8 bytes of
  sha256(prompt), one draw shared by the batch. The same prompt always gives the same
  embeddings, different prompts differ, but they carry no meaning: good for latency, schedules
  and backend agreement, not for images. `Conditioning.source` says which one was used.

Guidance (FLUX's embedded guidance scale) defaults to 3.5 when the engines take a guidance input.

Wan: `guidance` is the classifier-free guidance scale (WanPipeline's default 5.0; <= 1 turns CFG
off), and with CFG a negative prompt (WanPipeline's default "") is encoded the same way. Wan's
embeddings have the VIDEO batch: half the engine batch when the engines run cond and uncond in one
call (see `sampling_wan.cfg_layout`). A Wan pipeline folder needs only `text_encoder/` (UMT5).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..artifacts.iospec import IOSpec

DEFAULT_GUIDANCE = 3.5
TEXT_ENCODER_FOLDERS = ("text_encoder", "text_encoder_2")
WAN_TEXT_ENCODER_FOLDERS = ("text_encoder",)


@dataclass
class Conditioning:
    """Per-request engine inputs that do not change across steps (the timestep is added per step)."""

    encoder_hidden_states: torch.Tensor  # B x T x D
    pooled_projections: torch.Tensor | None  # B x D_pooled
    guidance: float | None  # FLUX: embedded guidance; Wan: classifier-free guidance scale
    source: str  # human-readable: which encoder (or the synthetic rule) produced the embeddings
    negative_encoder_hidden_states: torch.Tensor | None = None  # Wan with CFG: the negative prompt's

    @property
    def synthetic(self) -> bool:
        return self.source.startswith("synthetic")

    def engine_inputs(self, io: IOSpec, device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The static engine inputs, on ``device`` in ``dtype``, created once per request."""
        names = set(io.input_names)
        batch = next(t.shape[0] for t in io.inputs if t.name == "latent")
        inputs = {"encoder_hidden_states": self.encoder_hidden_states}
        if "pooled_projections" in names:
            inputs["pooled_projections"] = self.pooled_projections
        if "guidance" in names:
            if self.guidance is None:
                raise ValueError("the engines take a guidance scale; pass one (FLUX-dev default 3.5)")
            # FluxPipeline passes the raw scale (the transformer multiplies it by 1000 itself).
            inputs["guidance"] = torch.full((batch,), float(self.guidance))
        return {k: v.to(device=device, dtype=dtype) for k, v in inputs.items()}


def prompt_seed(prompt: str) -> int:
    """Seed of the synthetic embeddings: first 8 bytes of sha256(prompt), little-endian."""
    return int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "little")


def pipeline_folder_with_text_encoders(model_id: str, folders=TEXT_ENCODER_FOLDERS) -> Path | None:
    """The model's folder when it is a diffusers pipeline folder holding text encoders, else None."""
    path = Path(model_id).expanduser()
    if not (path / "model_index.json").is_file():
        return None
    if all((path / sub / "config.json").is_file() for sub in folders):
        return path
    return None


def synthetic_conditioning(prompt: str, io: IOSpec, guidance: float | None) -> Conditioning:
    shapes = {t.name: t.shape for t in io.inputs}
    batch, text_len, dim = shapes["encoder_hidden_states"]
    gen = torch.Generator().manual_seed(prompt_seed(prompt))
    states = torch.randn((1, text_len, dim), generator=gen).expand(batch, -1, -1)
    pooled = None
    if "pooled_projections" in shapes:
        pooled = torch.randn((1, shapes["pooled_projections"][1]), generator=gen).expand(batch, -1)
    source = f"synthetic (seeded from sha256 of the prompt: {prompt_seed(prompt)})"
    return Conditioning(states, pooled, guidance, source=source)


def encoded_conditioning(folder: Path, prompt: str, io: IOSpec, guidance: float | None, device="cpu") -> Conditioning:
    from diffusers import FluxPipeline

    shapes = {t.name: t.shape for t in io.inputs}
    batch, text_len, _ = shapes["encoder_hidden_states"]
    # Only the text side is loaded: the engines replace the transformer, the VAE is loaded by the caller.
    pipe = FluxPipeline.from_pretrained(folder, transformer=None, vae=None).to(device)
    with torch.no_grad():
        states, pooled, _ = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, device=torch.device(device), num_images_per_prompt=batch,
            max_sequence_length=text_len,
        )
    return Conditioning(states, pooled, guidance, source=f"text encoders of {folder}")


def make_conditioning(
    manifest: dict, prompt: str, guidance: float | None = None, device="cpu", negative_prompt: str = ""
) -> Conditioning:
    """Conditioning for ``prompt`` on the engines described by ``manifest`` (text encoders run on ``device``).

    ``negative_prompt`` is used by Wan with classifier-free guidance only.
    """
    if manifest.get("family") == "wan":
        return wan_conditioning(manifest, prompt, guidance, device, negative_prompt)
    io = IOSpec.from_json(manifest["io"])
    if manifest["model"]["id"] == "demo":
        from ..demo.class_table import CLASS_NAMES, demo_conditioning

        if prompt in CLASS_NAMES:  # a class name -> the demo's class table; other text stays synthetic
            return demo_conditioning(prompt, batch=next(t.shape[0] for t in io.inputs if t.name == "latent"))
    if guidance is None and "guidance" in io.input_names:
        guidance = DEFAULT_GUIDANCE
    folder = pipeline_folder_with_text_encoders(manifest["model"]["id"])
    if folder is not None:
        return encoded_conditioning(folder, prompt, io, guidance, device)
    return synthetic_conditioning(prompt, io, guidance)


def wan_conditioning(manifest: dict, prompt: str, guidance: float | None, device, negative_prompt: str = ""):
    """Wan: prompt (and, with CFG, negative prompt) embeddings of the video batch."""
    from ..pipelines.wan import DEFAULT_CFG, cfg_layout

    guidance = DEFAULT_CFG if guidance is None else float(guidance)
    io = IOSpec.from_json(manifest["io"])
    engine_batch, text_len, dim = {t.name: t.shape for t in io.inputs}["encoder_hidden_states"]
    layout = cfg_layout(engine_batch, guidance)
    folder = pipeline_folder_with_text_encoders(manifest["model"]["id"], WAN_TEXT_ENCODER_FOLDERS)
    if folder is not None:
        from diffusers import WanPipeline

        # Only the text side is loaded; the engines replace the transformer.
        pipe = WanPipeline.from_pretrained(folder, transformer=None, vae=None).to(device)
        with torch.no_grad():
            cond, neg = pipe.encode_prompt(
                prompt=prompt, negative_prompt=negative_prompt if layout.guided else None,
                do_classifier_free_guidance=layout.guided, num_videos_per_prompt=layout.video_batch,
                max_sequence_length=text_len, device=torch.device(device),
            )
        return Conditioning(cond, None, guidance, f"text encoder of {folder}", neg)

    def draw(text: str) -> torch.Tensor:
        gen = torch.Generator().manual_seed(prompt_seed(text))
        return torch.randn((1, text_len, dim), generator=gen).expand(layout.video_batch, -1, -1)

    neg = draw(negative_prompt) if layout.guided else None
    source = f"synthetic (seeded from sha256 of the prompt: {prompt_seed(prompt)})"
    return Conditioning(draw(prompt), None, guidance, source, neg)
