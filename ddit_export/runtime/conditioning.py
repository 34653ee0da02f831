"""Per-request conditioning of the engines, whatever the family: the `Conditioning` type and the
synthetic rule every pipeline falls back to.

When the engines' model is no diffusers pipeline folder with text encoders (the tiny model, a
transformer-only folder or hub id), a pipeline draws SYNTHETIC conditioning: deterministic
unit-normal embeddings from a generator seeded with the first 8 bytes of sha256(prompt), one draw
shared by the batch. The same prompt always gives the same embeddings, different prompts differ,
but they carry no meaning: good for latency, schedules and backend agreement, not for images.
`Conditioning.source` says which one was used. Encoding with real text encoders, guidance defaults
and negative prompts are each family's (pipelines/flux.py, pipelines/wan.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..artifacts.iospec import IOSpec
from ..util import limits


@dataclass
class Conditioning:
    """Per-request engine inputs that do not change across steps (the timestep is added per step)."""

    encoder_hidden_states: torch.Tensor  # B x T x D
    pooled_projections: torch.Tensor | None  # B x D_pooled
    guidance: float | None  # FLUX: embedded guidance; Wan: classifier-free guidance scale
    source: str  # human-readable: which encoder (or the synthetic rule) produced the embeddings
    negative_encoder_hidden_states: torch.Tensor | None = None  # Wan with CFG: the negative prompt's
    # Engine inputs on the latent grid, by input name (FLUX Control/Fill: condition_latent; Kontext: reference_latent)
    grid_inputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if self.guidance is not None:  # NaN or infinite guidance would sample NaN latents without a word
            self.guidance = limits.check_float(self.guidance, "guidance", low=0.0)

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
        for name in names & self.grid_inputs.keys():
            inputs[name] = self.grid_inputs[name]
        return {k: v.to(device=device, dtype=dtype) for k, v in inputs.items()}


def prompt_seed(prompt: str) -> int:
    """Seed of the synthetic embeddings: first 8 bytes of sha256(prompt), little-endian."""
    return int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "little")


def pipeline_folder_with_text_encoders(model_id: str, folders: tuple[str, ...]) -> Path | None:
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
