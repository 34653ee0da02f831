"""Wan 2.1 / 2.2 family: video latents, 3D patches, 3D RoPE (diffusers `WanTransformer3DModel`).

Wan's latent is `B x 16 x F x H/8 x W/8` with F = (frames - 1) / 4 + 1; its patch is (1, 2, 2).
DDiT changes only the spatial size: (1, 4, 4), (1, 8, 8). Wan's forward embeds, positions and
unpatchifies by itself (reading `config.patch_size`), so a size swaps the model's
`patch_embedding` (Conv3d), `rope` and `proj_out`, and the config's patch size.

Variants (docs/variants-wan.md):
- Image-to-video (Wan 2.1 I2V / FLF2V, Wan 2.2 I2V A14B): `in_channels` 36 = the 16-channel noisy
  latent + 20 condition channels (frame mask + image latent) on the latent grid. The condition is
  the engine input `condition_latent` (`B x 20 x F x h x w`), padded and concatenated with the latent
  inside the engine, so every size patchifies it with the latent and keeps one signature; the
  per-size embedding PI-resizes all 36 input channels, the de-embedding outputs `out_channels`.
  The CLIP image embeddings are the engine input `encoder_hidden_states_image`: not on the grid,
  they reach the blocks' added K/V unchanged at every size.
- Wan 2.2 TI2V-5B: a 48-channel latent from the Wan 2.2 VAE (16x spatial compression).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..ddit import staged_wan
from ..ddit.modules import PatchEmbed, linear_from
from ..ddit.resize import pi_resize_embedding, upsampled_deembedding
from .base import Family, ModelLoadError, TensorSpecLike, read_config
from .defaults import FAMILY_DEFAULTS

WAN_TINY_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
    text_dim=32, freq_dim=32, ffn_dim=48, num_layers=2, rope_max_seq_len=64,
)
# Wan 2.1 1.3B's real widths (1536 = 12 x 128, FFN 8960, UMT5 4096) at reduced depth, for latency work.
WAN_MEDIUM_CONFIG = dict(
    WAN_TINY_CONFIG, num_attention_heads=12, attention_head_dim=128, text_dim=4096, freq_dim=256,
    ffn_dim=8960, num_layers=2, rope_max_seq_len=1024,
)
ROPE_THETA = 10000.0  # WanTransformer3DModel builds its RoPE with the default theta and keeps no copy
# Pipeline folders whose transformer the engines replace (None: a bare transformer folder).
SUPPORTED_PIPELINES = (None, "WanPipeline", "WanImageToVideoPipeline")
EXPERT_2 = "transformer_2"  # Wan 2.2 A14B's low-noise expert: its pipeline subfolder and its engines' subfolder
IMAGE_TOKENS = 257  # CLIP ViT-H/14 at 224 px (Wan I2V's image encoder): 16 x 16 patches + the class token
WAN22_VAE_CHANNELS, WAN22_VAE_SCALE = 48, 16  # the Wan 2.2 VAE (TI2V-5B): 48 latent channels, 16x spatial

# Every feed-forward linear of every block.
WAN_LORA_TARGETS = r".*blocks\.\d+\.ffn\.net\.(0\.proj|2)"


def _axis_tables(dim: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    return get_1d_rotary_pos_embed(
        dim, positions, ROPE_THETA, use_real=True, repeat_interleave_real=True, freqs_dtype=torch.float64
    )


class FractionalWanRope(nn.Module):
    """Wan's 3D RoPE with coarse tokens at fractional centres s*i + (s-1)/2 of the base grid.

    Same layout as diffusers' `WanRotaryPosEmbed` (frames, rows, cols axes; `1 x N x 1 x D`); with
    s = 1 it reproduces it exactly (tested).
    """

    def __init__(self, base_rope, patch: int, base_patch: int):
        super().__init__()
        self.dims = (base_rope.t_dim, base_rope.h_dim, base_rope.w_dim)
        self.patch, self.scale = patch, patch // base_patch
        self._cache: dict = {}

    def tables(self, frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, p = self.scale, self.patch
        axes = (
            torch.arange(frames, dtype=torch.float64),
            torch.arange(height // p, dtype=torch.float64) * s + (s - 1) / 2,
            torch.arange(width // p, dtype=torch.float64) * s + (s - 1) / 2,
        )
        sizes = [len(a) for a in axes]
        cos_parts, sin_parts = [], []
        for axis, (dim, pos) in enumerate(zip(self.dims, axes)):
            cos, sin = _axis_tables(dim, pos)
            view = [1, 1, 1, -1]
            view[axis] = sizes[axis]
            cos_parts.append(cos.view(view).expand(*sizes, -1))
            sin_parts.append(sin.view(view).expand(*sizes, -1))
        n = sizes[0] * sizes[1] * sizes[2]
        return (torch.cat(cos_parts, -1).reshape(1, n, 1, -1), torch.cat(sin_parts, -1).reshape(1, n, 1, -1))

    def forward(self, hidden_states: torch.Tensor):
        _, _, f, h, w = hidden_states.shape
        key = (f, h, w, hidden_states.device)
        if key not in self._cache:  # eager training calls repeat the same geometry
            self._cache[key] = tuple(t.to(hidden_states.device) for t in self.tables(f, h, w))
        return self._cache[key]


class WanFamily(Family):
    name = "wan"
    latent_channels = 16
    base_patch = 2
    vae_scale = 8
    temporal_scale = 4
    embed_name = "patch_embedding"
    deembed_name = "proj_out"
    rope_name = "rope"
    lora_targets = WAN_LORA_TARGETS
    staged_parts = staged_wan
    presets = {"tiny": WAN_TINY_CONFIG, "medium": WAN_MEDIUM_CONFIG}
    defaults = FAMILY_DEFAULTS["wan"]
    default_text_len = defaults.text_len
    default_frames = defaults.frames
    timestep_scale = 1000.0  # WanPipeline passes the scheduler's timestep (sigma * 1000)...
    float32_inputs = ("timestep",)  # ...in fp32, whatever the transformer's dtype
    default_model = defaults.model
    default_size = defaults.size

    @staticmethod
    def model_class():
        from diffusers import WanTransformer3DModel

        return WanTransformer3DModel

    # ---- geometry -------------------------------------------------------------------------------
    def check_image_size(self, height: int, width: int, frames: int | None = None) -> None:
        self.check_pixels(height, width)
        frames = self.default_frames if frames is None else frames
        if frames < 1 or (frames - 1) % self.temporal_scale:
            k = max(0, round((frames - 1) / self.temporal_scale))
            raise ValueError(
                f"--frames must be 4k+1 for Wan's VAE (got {frames}); try {4 * k + 1} or {4 * k + 5}"
            )

    def vae_scale_of(self, channels: int | None) -> int:
        """Spatial compression of the VAE that makes `channels`-channel latents (Wan 2.2's 48: 16x)."""
        return WAN22_VAE_SCALE if channels == WAN22_VAE_CHANNELS else self.vae_scale

    def latent_shape(self, batch: int, height: int, width: int, frames: int | None = None,
                     channels: int | None = None) -> tuple[int, ...]:
        frames = self.default_frames if frames is None else frames
        latent_frames = (frames - 1) // self.temporal_scale + 1
        channels = channels or self.latent_channels
        scale = self.vae_scale_of(channels)
        step = scale * self.base_patch
        if height % step or width % step:  # Wan 2.2's VAE: the pixel check before loading assumed 8x
            raise ValueError(f"height and width must be multiples of {step} for a {channels}-channel Wan latent "
                             f"(got {height}x{width}); try {max(step, round(height / step) * step)}x"
                             f"{max(step, round(width / step) * step)}")
        return (batch, channels, latent_frames, height // scale, width // scale)

    def latent_channels_of(self, config) -> int:
        """The noisy latent's channels: `out_channels` (I2V's extra input channels are the condition).

        ``config``: the model's (FrozenDict) or a manifest's (plain dict)."""
        return int(config.get("out_channels") or config["in_channels"])

    def condition_channels(self, config) -> int:
        """Input channels beyond the noisy latent (I2V: mask + image latent), 0 for text-to-video."""
        return int(config["in_channels"]) - self.latent_channels_of(config)

    def image_embeds(self, config) -> tuple[int, int] | None:
        """(images per video, image_dim) of a model with CLIP image embeddings (I2V: 1, FLF2V: 2), else None."""
        if not config.get("image_dim"):
            return None
        return (2 if config.get("pos_embed_seq_len") else 1), int(config["image_dim"])

    def check_config(self, config: dict, pipeline_class: str | None) -> None:
        """Refuse, before the weights load, a Wan model the engines cannot express (one line)."""
        where = "the model's transformer config"
        name = config.get("_class_name", "WanTransformer3DModel")
        if name != "WanTransformer3DModel":
            raise ModelLoadError(f"the model's transformer is a {name}; `ddit-export wan` exports "
                                 "WanTransformer3DModel (Wan 2.1 T2V/I2V/FLF2V, Wan 2.2 TI2V-5B and A14B)")
        if pipeline_class not in SUPPORTED_PIPELINES:
            raise ModelLoadError(f"the model folder is a {pipeline_class}; the wan family supports "
                                 f"{', '.join(p for p in SUPPORTED_PIPELINES if p)} folders")
        if tuple(config.get("patch_size", (1, 2, 2))) != (1, 2, 2):
            raise ModelLoadError(f"{where}: patch_size {config['patch_size']} is not supported; Wan's (1, 2, 2) is")
        inc = int(config.get("in_channels", 16))
        outc = int(config.get("out_channels") or inc)
        if inc < outc:
            raise ModelLoadError(f"{where}: in_channels {inc} < out_channels {outc} is not supported; the input "
                                 "must be the latent plus optional condition channels")
        if bool(config.get("image_dim")) != bool(config.get("added_kv_proj_dim")):
            raise ModelLoadError(f"{where}: image_dim and added_kv_proj_dim must be set together (Wan I2V)")

    def experts_of(self, model: str) -> dict | None:
        """Wan 2.2 A14B: a pipeline folder with `transformer_2` and `boundary_ratio` (WanPipeline's rule: the
        first expert for timesteps >= boundary_ratio * num_train_timesteps, the second below)."""
        folder = Path(model).expanduser()
        index = read_config(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
        second = index.get("transformer_2")
        if not second or second[0] is None:
            return None
        if index.get("boundary_ratio") is None:
            raise ModelLoadError(f"{folder}/model_index.json names transformer_2 but no boundary_ratio: the switch "
                                 "between the experts is unknown; add the pipeline's boundary_ratio")
        if not (folder / EXPERT_2 / "config.json").is_file():
            raise ModelLoadError(f"{folder} names transformer_2 but has no {EXPERT_2}/config.json")
        self.check_config(read_config(folder / EXPERT_2 / "config.json"), index.get("_class_name"))
        steps = 1000
        if (folder / "scheduler" / "scheduler_config.json").is_file():
            steps = int(read_config(folder / "scheduler" / "scheduler_config.json").get("num_train_timesteps", 1000))
        ratio = float(index["boundary_ratio"])
        return {"boundary_ratio": ratio, "boundary_timestep": ratio * steps, "second": EXPERT_2}

    # ---- model ----------------------------------------------------------------------------------
    def condition_specs(self, config, batch: int, text_len: int) -> list[TensorSpecLike]:
        """The text embeddings and timestep, and for I2V the CLIP image embeddings (not on the grid)."""
        specs = [("encoder_hidden_states", (batch, text_len, config.text_dim)), ("timestep", (batch,))]
        images = self.image_embeds(config)
        if images:
            specs.append(("encoder_hidden_states_image", (batch * images[0], IMAGE_TOKENS, images[1])))
        return specs

    def grid_specs(self, config, latent_shape) -> list[TensorSpecLike]:
        """I2V: the mask + image-latent channels, on the latent's grid (the engine input `condition_latent`)."""
        extra = self.condition_channels(config)
        return [("condition_latent", (latent_shape[0], extra, *tuple(latent_shape)[2:]))] if extra else []

    def predict(self, transformer, latent, patch: int, conditioning: dict) -> torch.Tensor:
        condition = conditioning.get("condition_latent")
        if condition is not None:  # I2V: the condition channels follow the latent's, padded like it
            latent = torch.cat([latent, self.pad(condition, patch)], dim=1)
        return transformer(
            hidden_states=latent,
            timestep=conditioning["timestep"],
            encoder_hidden_states=conditioning["encoder_hidden_states"],
            encoder_hidden_states_image=conditioning.get("encoder_hidden_states_image"),
            return_dict=False,
        )[0]

    def new_embed(self, base_embed: nn.Conv3d, patch: int) -> PatchEmbed:
        channels = base_embed.in_channels  # latent + condition channels (I2V: 36), all resized alike
        flat = base_embed.weight.reshape(base_embed.out_channels, -1)  # (d, C*1*p*p): (c, dy, dx) order
        weight = pi_resize_embedding(flat, channels, self.base_patch, patch)
        conv = nn.Conv3d(channels, base_embed.out_channels, (1, patch, patch), stride=(1, patch, patch))
        return PatchEmbed(conv, weight, base_embed.bias, channel_dim=1)

    def fold_embed(self, embed: PatchEmbed) -> nn.Conv3d:
        return embed.folded()

    def new_deembed(self, base_deembed: nn.Linear, patch: int) -> nn.Linear:
        # Wan orders output features (dy, dx, channel); the init maths works in (channel, dy, dx).
        p, d = self.base_patch, base_deembed.in_features
        c = base_deembed.out_features // p**2  # out_channels: the noisy latent's
        weight = base_deembed.weight.reshape(p * p, c, d).transpose(0, 1).reshape(c * p * p, d)
        bias = base_deembed.bias.reshape(p * p, c).T.reshape(-1)
        w, b = upsampled_deembedding(weight, bias, c, p, patch)
        w = w.reshape(c, patch * patch, d).transpose(0, 1).reshape(patch * patch * c, d)
        b = b.reshape(c, patch * patch).T.reshape(-1)
        return linear_from(w.contiguous(), b.contiguous())

    def eager_rope(self, transformer, patch: int):
        return FractionalWanRope(getattr(transformer, self.rope_name), patch, self.base_patch)

    def rope_tables(self, transformer, patch: int, latent_shape, text_len: int):
        rope = getattr(transformer, self.rope_name)
        if patch != self.base_patch:
            return FractionalWanRope(rope, patch, self.base_patch).tables(*latent_shape[2:])
        return rope(torch.empty(latent_shape, device="meta"))  # diffusers' RoPE reads only the shape

    def engine_config(self, config, patch: int) -> dict:
        return {**dict(config), "patch_size": (1, patch, patch)}

    @contextmanager
    def patch_config(self, transformer, patch: int):
        from diffusers.configuration_utils import FrozenDict

        saved = transformer._internal_dict
        transformer._internal_dict = FrozenDict({**saved, "patch_size": (1, patch, patch)})
        try:
            yield
        finally:
            transformer._internal_dict = saved


WAN = WanFamily()
