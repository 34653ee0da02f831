"""FLUX family: loading, latent geometry, patch packing, positions and conditioning.

FLUX works on a VAE latent `B x 16 x H/8 x W/8`. The stock pipeline packs 2x2 latent pixels into one
token of 64 features ordered (channel, dy, dx); that is the base patch size p = 2. DDiT adds coarser
sizes P = 2p, 4p whose tokens hold 16*P*P features in the same (channel, dy, dx) order.

Variants (docs/variants.md): FLUX.1-Depth/Canny and FLUX.1-Fill take extra conditioning channels on the
latent grid (`in_channels` > `out_channels`); the engines take it as one more grid input,
`condition_latent`, concatenated with the latent on the channel axis before packing, which is exactly
the stock pipelines' token-feature concatenation. FLUX.1-Kontext appends reference-image tokens to the
sequence (RoPE ids with first coordinate 1); the engines take the reference latent as
`reference_latent` and pack it at the step's size like the latent (default) or keep its tokens at the
base size at every step (`--kontext-reference base`, `reference_tokens`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..ddit import staged_flux
from ..ddit.modules import PatchEmbed, linear_from
from ..ddit.resize import bilinear_upsample_matrix, pi_resize_embedding, upsampled_deembedding
from .base import Family, ModelLoadError, TensorSpecLike
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

# Stock pipelines whose transformer call the engines reproduce (see `variant_of`); a Kontext transformer has
# FLUX.1-dev's config, so the pipeline folder's model_index.json says which one it is, and the loader records
# it in the config under KONTEXT_KEY (diffusers keeps such private keys through from_config).
KONTEXT_PIPELINE = "FluxKontextPipeline"
KONTEXT_KEY = "_ddit_pipeline"
CONDITION_LATENT = "condition_latent"  # Control: the control image's latent; Fill: masked-image latent + mask
REFERENCE_LATENT = "reference_latent"  # Kontext: the reference image's latent (the output's grid)
# Kontext: where the reference tokens live at a coarse step (export --kontext-reference; docs/variants.md):
# "step" packs them at the step's size like the latent, "base" keeps them at the base size. Recorded in the
# config (and so in the manifest) under this key.
REFERENCE_SIZE_KEY = "_ddit_reference_size"
REFERENCE_SIZES = ("step", "base")


def _config_value(config, key: str, default=None):
    """`key` of a diffusers FrozenDict or a manifest's plain dict."""
    return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


def condition_channels(config) -> int:
    """Grid channels of the conditioning concatenated to the latent: in_channels/4 - out_channels/4."""
    inputs = int(_config_value(config, "in_channels"))
    outputs = int(_config_value(config, "out_channels") or inputs)
    return (inputs - outputs) // 4


def has_reference(config) -> bool:
    """Whether the model is FLUX.1-Kontext (reference-image tokens appended to the sequence)."""
    return _config_value(config, KONTEXT_KEY) == KONTEXT_PIPELINE


def reference_size(config) -> str:
    """Kontext's reference token size at coarse steps: "step" (default) or "base"."""
    return _config_value(config, REFERENCE_SIZE_KEY) or "step"


def variant_of(config) -> str:
    """The stock diffusers pipeline a FLUX transformer with this config runs in (docs/variants.md)."""
    channels = condition_channels(config)
    if has_reference(config):
        return KONTEXT_PIPELINE
    if channels == 0:
        return "FluxPipeline"
    latent = (int(_config_value(config, "out_channels") or 0) or int(_config_value(config, "in_channels"))) // 4
    return "FluxControlPipeline" if channels == latent else "FluxFillPipeline"


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
        """FLUX tokens hold 2x2 latent pixels, so out_channels / 4 (16 for every VAE-based FLUX model; the
        demo model's pixel latent has 3). Control and Fill models take more input channels than that."""
        outputs = _config_value(config, "out_channels") or _config_value(config, "in_channels")
        return int(outputs) // self.base_patch**2

    def check_config(self, config: dict, pipeline_class: str | None) -> None:
        """Refuse, from config.json alone, a FLUX transformer the engines cannot reproduce (one line)."""
        super().check_config(config, pipeline_class)
        inputs, outputs = config.get("in_channels"), config.get("out_channels") or config.get("in_channels")
        supported = ("supported: in_channels = out_channels (FLUX.1-dev/schnell/Kontext), 2 x out_channels "
                     "(Depth/Canny) or 2 x out_channels + 256 (Fill)")
        known = (outputs, 2 * outputs, 2 * outputs + 4 * self.vae_scale**2) if isinstance(outputs, int) else ()
        if not (isinstance(inputs, int) and outputs > 0 and outputs % 4 == 0 and inputs in known):
            raise ModelLoadError(f"FluxTransformer2DModel config in_channels={inputs}, out_channels={outputs} "
                                 f"is not a FLUX layout the engines handle; {supported}")
        if config.get("patch_size", 1) != 1:
            raise ModelLoadError(f"FluxTransformer2DModel config patch_size={config.get('patch_size')}: the "
                                 "engines pack 2x2 latent pixels per token as every FLUX pipeline does (patch_size 1)")
        if pipeline_class == KONTEXT_PIPELINE and inputs != outputs:
            raise ModelLoadError(f"{KONTEXT_PIPELINE} with in_channels={inputs} != out_channels={outputs}: "
                                 "Kontext with extra grid channels is not supported")

    def apply_request(self, transformer, request: dict) -> None:
        """Kontext: record the request's reference token size (--kontext-reference) in the model's config."""
        size = request.get("kontext_reference") or "step"
        if size not in REFERENCE_SIZES:
            raise ValueError(f"--kontext-reference must be one of {', '.join(REFERENCE_SIZES)} (got {size})")
        if has_reference(transformer.config):
            transformer.register_to_config(**{REFERENCE_SIZE_KEY: size})
        elif size != "step":
            raise ValueError("--kontext-reference applies to FLUX.1-Kontext models (a pipeline folder whose "
                             "model_index.json names FluxKontextPipeline); drop it")

    def mark_pipeline(self, transformer, pipeline_class: str | None):
        """Record a Kontext model in its config (its transformer config is FLUX.1-dev's)."""
        if pipeline_class == KONTEXT_PIPELINE:
            transformer.register_to_config(**{KONTEXT_KEY: KONTEXT_PIPELINE})
        return transformer

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

    def reference_ids(self, patch: int, latent_shape: tuple[int, ...]) -> torch.Tensor:
        """Kontext's reference tokens: the image ids with first coordinate 1 (FluxKontextPipeline)."""
        ids = self.image_ids(patch, latent_shape)
        ids[:, 0] = 1
        return ids

    def reference_tokens(self, reference: torch.Tensor, patch: int) -> torch.Tensor:
        """Kontext's reference as base-size tokens in the feature space of size `patch`'s embedding.

        Each base 2x2 patch is bilinearly upsampled to P x P (the matrix B of ddit/resize.py). The size's
        PI-resized embedding satisfies W_P (B x) = W_p x, so an untrained size embeds every reference token
        exactly as the base model does: the reference keeps its base resolution and its own token set, the
        latent alone gets coarser, and one embedding (one engine signature) serves both.
        """
        tokens = self.pack(reference, self.base_patch)
        if patch == self.base_patch:
            return tokens
        b, n, f = tokens.shape
        up = bilinear_upsample_matrix(self.base_patch, patch).to(tokens.dtype)  # P*P x p*p
        per_channel = tokens.reshape(b, n, f // self.base_patch**2, self.base_patch**2)
        return (per_channel @ up.T.to(tokens.device)).reshape(b, n, -1)

    def grid_specs(self, config, latent_shape) -> list[TensorSpecLike]:
        """Engine inputs on the latent's grid: Control/Fill's conditioning channels, Kontext's reference."""
        b, _, h, w = latent_shape
        specs = []
        if condition_channels(config):
            specs.append((CONDITION_LATENT, (b, condition_channels(config), h, w)))
        if has_reference(config):
            specs.append((REFERENCE_LATENT, (b, self.latent_channels_of(config), h, w)))
        return specs

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
        img_ids = self.image_ids(patch, tuple(latent.shape))
        txt_ids = self.text_ids(ehs.shape[1]).to(latent.device, torch.float32)
        grid = latent
        if conditioning.get(CONDITION_LATENT) is not None:
            # Channel concatenation on the grid, then packing = the pipelines' concatenation of packed features.
            grid = torch.cat([latent, self.pad(conditioning[CONDITION_LATENT], patch).to(latent.dtype)], dim=1)
        hidden = self.pack(grid, patch)
        tokens = hidden.shape[1]
        if conditioning.get(REFERENCE_LATENT) is not None:
            # Kontext: the reference tokens follow the latent's, at the step's size or the base size
            # (docs/variants.md), padded like the latent so the engine's folded RoPE covers them.
            reference = self.pad(conditioning[REFERENCE_LATENT], patch).to(latent.dtype)
            at = patch if reference_size(transformer.config) == "step" else self.base_patch
            tokens_of = self.pack(reference, patch) if at == patch else self.reference_tokens(reference, patch)
            hidden = torch.cat([hidden, tokens_of], dim=1)
            img_ids = torch.cat([img_ids, self.reference_ids(at, tuple(reference.shape))])
        img_ids = img_ids.to(latent.device, torch.float32)
        out = transformer(
            hidden_states=hidden,
            encoder_hidden_states=ehs,
            pooled_projections=conditioning["pooled_projections"],
            timestep=conditioning["timestep"],
            guidance=conditioning.get("guidance"),
            img_ids=img_ids,
            txt_ids=txt_ids,
            return_dict=False,
        )[0]
        return self.unpack(out[:, :tokens], patch, tuple(latent.shape))

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
        parts = [self.text_ids(text_len), self.image_ids(patch, latent_shape)]
        if has_reference(transformer.config):  # the reference: the latent's (padded) grid
            at = patch if reference_size(transformer.config) == "step" else self.base_patch
            parts.append(self.reference_ids(at, latent_shape))
        ids = torch.cat(parts).float()
        return getattr(transformer, self.rope_name)(ids)


FLUX = FluxFamily()
