"""FLUX family: loading, latent geometry, patch packing, positions and conditioning.

FLUX works on a VAE latent `B x 16 x H/8 x W/8`. The stock pipeline packs 2x2 latent pixels into one
token of 64 features ordered (channel, dy, dx); that is the base patch size p = 2. DDiT adds coarser
sizes P = 2p, 4p whose tokens hold 16*P*P features in the same (channel, dy, dx) order.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ddit import staged_flux
from ..ddit.modules import PatchEmbed, linear_from
from ..ddit.resize import pi_resize_embedding, upsampled_deembedding
from .base import Family, TensorSpecLike
from .defaults import FAMILY_DEFAULTS

FLUX_TINY_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=16,
    guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)

# FLUX.1-dev's real widths (head 128, RoPE axes 16/56/56, T5 4096, CLIP 768) at reduced depth:
# "medium" for CPU latency work, "smoke" at full width 3072 / 24 heads for GPU smoke runs.
FLUX_MEDIUM_CONFIG = dict(
    FLUX_TINY_CONFIG, num_layers=2, num_single_layers=4, attention_head_dim=128, num_attention_heads=4,
    joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56),
)
FLUX_SMOKE_CONFIG = dict(FLUX_MEDIUM_CONFIG, num_layers=2, num_single_layers=4, num_attention_heads=24)

# Targets of the per-size LoRA adapters: every feed-forward linear. In single-stream blocks the MLP
# is `proj_mlp` up and `proj_out` down (that one also mixes in the attention output). The top-level
# `proj_out` (the de-embedding) is NOT a target, hence the anchored pattern.
FLUX_LORA_TARGETS = (
    r".*transformer_blocks\.\d+\.(ff|ff_context)\.net\.(0\.proj|2)"
    r"|.*single_transformer_blocks\.\d+\.(proj_mlp|proj_out)"
)


class FluxFamily(Family):
    name = "flux"
    latent_channels = 16
    base_patch = 2
    vae_scale = 8
    embed_name = "x_embedder"
    deembed_name = "proj_out"
    rope_name = "pos_embed"
    lora_targets = FLUX_LORA_TARGETS
    staged_parts = staged_flux
    presets = {"tiny": FLUX_TINY_CONFIG, "medium": FLUX_MEDIUM_CONFIG, "smoke": FLUX_SMOKE_CONFIG}
    defaults = FAMILY_DEFAULTS["flux"]
    default_text_len = defaults.text_len
    default_model = defaults.model
    default_size = defaults.size

    @staticmethod
    def model_class():
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel

    # ---- geometry -------------------------------------------------------------------------------
    def check_image_size(self, height: int, width: int, frames: int | None = None) -> None:
        self.check_pixels(height, width)
        if frames not in (None, 1):
            raise ValueError("FLUX makes images: --frames does not apply")

    def latent_channels_of(self, config) -> int:
        """FLUX tokens hold 2x2 latent pixels, so in_channels / 4 (16 for every VAE-based FLUX model; the
        demo model's pixel latent has 3)."""
        return int(config.in_channels) // self.base_patch**2

    def latent_shape(self, batch: int, height: int, width: int, frames: int | None = None,
                     channels: int | None = None) -> tuple[int, ...]:
        return (batch, channels or self.latent_channels, height // self.vae_scale, width // self.vae_scale)

    def image_ids(self, patch: int, latent_shape: tuple[int, ...]) -> torch.Tensor:
        """RoPE coordinates of each token in the BASE token grid.

        A coarse token spanning s x s base tokens sits at the fractional centre s*i + (s-1)/2, so
        tokens of every patch size share one coordinate system (docs/method.md, Modules per extra size: positions).
        """
        h, w = latent_shape[-2:]
        s = patch // self.base_patch
        rows = torch.arange(h // patch, dtype=torch.float64) * s + (s - 1) / 2
        cols = torch.arange(w // patch, dtype=torch.float64) * s + (s - 1) / 2
        ids = torch.zeros(h // patch, w // patch, 3, dtype=torch.float64)
        ids[..., 1] = rows[:, None]
        ids[..., 2] = cols[None, :]
        return ids.reshape(-1, 3)

    def text_ids(self, text_len: int) -> torch.Tensor:
        return torch.zeros(text_len, 3, dtype=torch.float64)

    # ---- model ----------------------------------------------------------------------------------
    def condition_specs(self, config, batch: int, text_len: int) -> list[TensorSpecLike]:
        specs = [
            ("encoder_hidden_states", (batch, text_len, config.joint_attention_dim)),
            ("pooled_projections", (batch, config.pooled_projection_dim)),
            ("timestep", (batch,)),
        ]
        if config.guidance_embeds:
            specs.append(("guidance", (batch,)))
        return specs

    def predict(self, transformer, latent, patch: int, conditioning: dict) -> torch.Tensor:
        """One call the way FluxPipeline makes it, with this size's tokens and positions."""
        ehs = conditioning["encoder_hidden_states"]
        img_ids = self.image_ids(patch, tuple(latent.shape)).to(latent.device, torch.float32)
        txt_ids = self.text_ids(ehs.shape[1]).to(latent.device, torch.float32)
        out = transformer(
            hidden_states=self.pack(latent, patch),
            encoder_hidden_states=ehs,
            pooled_projections=conditioning["pooled_projections"],
            timestep=conditioning["timestep"],
            guidance=conditioning.get("guidance"),
            img_ids=img_ids,
            txt_ids=txt_ids,
            return_dict=False,
        )[0]
        return self.unpack(out, patch, tuple(latent.shape))

    def new_embed(self, base_embed, patch: int) -> PatchEmbed:
        channels = base_embed.weight.shape[1] // self.base_patch**2
        weight = pi_resize_embedding(base_embed.weight, channels, self.base_patch, patch)
        return PatchEmbed(nn.Linear(weight.shape[1], weight.shape[0]), weight, base_embed.bias)

    def fold_embed(self, embed: PatchEmbed) -> nn.Linear:
        return embed.folded()

    def new_deembed(self, base_deembed, patch: int) -> nn.Linear:
        channels = base_deembed.weight.shape[0] // self.base_patch**2
        w, b = upsampled_deembedding(base_deembed.weight, base_deembed.bias, channels,
                                     self.base_patch, patch)
        return linear_from(w, b)

    def rope_tables(self, transformer, patch: int, latent_shape, text_len: int):
        ids = torch.cat([self.text_ids(text_len), self.image_ids(patch, latent_shape)]).float()
        return getattr(transformer, self.rope_name)(ids)


FLUX = FluxFamily()
