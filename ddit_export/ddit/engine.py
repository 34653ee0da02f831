"""The uniform engine graph: one static-shape model call at one patch size.

Every engine of a model has the same inputs (the full-resolution latent plus the step's
conditioning) and the same output (the full-resolution prediction), whatever its patch size.
Patchify, folded RoPE, the patch-size vector (folded into the embedding bias), the DDiT residual
and unpatchify all live inside, so the runtime binds the same buffers to any engine.
"""

from __future__ import annotations

import torch
from torch import nn

from ..families.base import Family
from .model import run_step

# Graph input order; a family uses the subset it needs (absent ones are simply not inputs).
ENGINE_INPUTS = ("latent", "encoder_hidden_states", "timestep", "pooled_projections", "guidance",
                 "condition_latent", "reference_latent",  # on the latent's grid (FLUX variants, Wan I2V)
                 "encoder_hidden_states_image")  # Wan I2V's CLIP image tokens: not on the grid
ENGINE_OUTPUT = "prediction"


class PatchSizeEngine(nn.Module):
    def __init__(self, family: Family, transformer, residual, patch: int, latent_shape, text_len: int):
        super().__init__()
        self.family = family
        self.transformer = transformer
        self.residual = residual
        self.patch = patch
        self.latent_shape = tuple(latent_shape)
        self.text_len = text_len

    def forward(
        self,
        latent: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        pooled_projections: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        condition_latent: torch.Tensor | None = None,
        reference_latent: torch.Tensor | None = None,
        encoder_hidden_states_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        conditioning = {
            "encoder_hidden_states": encoder_hidden_states,
            "timestep": timestep,
            "pooled_projections": pooled_projections,
            "guidance": guidance,
        }
        # Grid inputs only when given: a family's predict tells the variants apart by their presence.
        for name, value in (("condition_latent", condition_latent), ("reference_latent", reference_latent),
                            ("encoder_hidden_states_image", encoder_hidden_states_image)):
            if value is not None:
                conditioning[name] = value
        return run_step(self.family, self.transformer, self.residual, self.patch, latent, conditioning)

    def sample_inputs(self, batch_dtype: torch.dtype | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        """Random inputs of the engine's static shapes, in graph input order."""
        dtype = batch_dtype or next(self.parameters()).dtype
        device = next(self.parameters()).device
        gen = torch.Generator().manual_seed(seed)
        batch = self.latent_shape[0]
        shapes = {"latent": self.latent_shape}
        shapes.update(dict(self.family.condition_specs(self.transformer.config, batch, self.text_len)))
        shapes.update(dict(self.family.grid_specs(self.transformer.config, self.latent_shape)))
        inputs = {}
        for name in ENGINE_INPUTS:
            if name not in shapes:
                continue
            if name in ("timestep", "guidance"):
                # as the pipeline passes them: timestep sigma (FLUX) or sigma*1000 (Wan); guidance 3.5/1000
                scale = self.family.timestep_scale if name == "timestep" else 0.005
                value = torch.rand(shapes[name], generator=gen) * scale
            else:
                value = torch.randn(shapes[name], generator=gen)
            inputs[name] = value.to(device=device, dtype=dtype)
        return inputs
