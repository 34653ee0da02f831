"""The demo transformer: its config, where its files live, and loading it offline.

A FluxTransformer2DModel on the 3 x 32 x 32 pixel latent (demo/codec.py): in_channels 12 (3 channels
x 2 x 2), hidden 128 (2 heads x 64), one double-stream and two single-stream blocks, 4 class tokens.

How it is trained (tools/train_demo.py), and why in two phases: first on FLUX's 16-channel layout
(the pixels in channels 0-2, channels 3-15 zero), then narrowed to the pixel channels
(`narrow_to_pixel_channels`) and fine-tuned on them. Measured on the same 48 seeds (2026-12-02):
  16 channels, 700 steps (the previous shipped demo)      class accuracy 97.9%
  3 channels from scratch, 700 steps                      77.1%  (hidden 192 x 3000 steps: 85.4%)
  the 16-channel model narrowed, no fine-tuning           37.5%
  narrowed + 400 fine-tuning steps (shipped)              91.7%, FD 128.7 (144 seeds: 95.8%, FD 82.2)
  narrowed + 1000 fine-tuning steps                       85.4%, FD 129.0 (144 seeds: 91.7%, FD 79.2)
Why narrow at all: zero channels are still noised, so in the 16-channel layout a size-8 token holds
16 * 8 * 8 = 1024 features, 832 of them pure noise whose velocity the 128-wide token cannot carry; the
size-4 and size-8 students stayed far from the teacher (velocity MSE 0.05-0.10 on early steps). With
3 channels a size-8 token holds 192 features, and the students came 10x (size 4: 0.004-0.006) and
3x (size 8: 0.014-0.038) closer on early steps (tools/demo_step_errors.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .codec import LATENT_CHANNELS, PADDED_CHANNELS

# No guidance embedding: the demo samples without CFG or embedded guidance (one call per step).
DEMO_CONFIG = dict(
    patch_size=1,
    in_channels=12,  # 3 pixel channels x 2 x 2
    num_layers=1,
    num_single_layers=2,
    attention_head_dim=64,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=False,
    axes_dims_rope=(8, 28, 28),
)
DEMO_TEXT_LEN = 4  # class "prompt" tokens per class
DEMO_HEIGHT = DEMO_WIDTH = 256  # what the FLUX family calls the image size: latent 32x32 = 256 / vae_scale 8
DEMO_MODEL_ID = "demo"

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "demo"
TRANSFORMER_DIR = ASSETS / "transformer"
CLASS_TABLE = ASSETS / "class_embeddings.safetensors"
ADAPTERS_DIR = ASSETS / "adapters"
CLASSIFIER = ASSETS / "classifier.safetensors"
TRAIN_REPORT = ASSETS / "train_report.json"


class DemoAssetsMissing(ValueError):
    """The package was installed without the demo's weights (they ship as package data)."""


def require(path: Path) -> Path:
    if not path.exists():
        raise DemoAssetsMissing(
            f"the demo model's file {path} is missing: reinstall ddit-export with its package data, or rebuild "
            "it with `python tools/train_demo.py`"
        )
    return path


def build_padded_transformer(seed: int = 0):
    """A freshly initialised demo transformer on FLUX's 16-channel layout (the first training phase)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(**dict(DEMO_CONFIG, in_channels=PADDED_CHANNELS * 4))


def narrow_to_pixel_channels(padded):
    """The padded model with only the pixel channels' inputs and outputs kept: the demo's config.

    FLUX packs features as (channel, dy, dx), so channel c owns features 4c..4c+3 of the input
    embedding's columns and of the output projection's rows.
    """
    from diffusers import FluxTransformer2DModel

    keep = LATENT_CHANNELS * 4
    state = dict(padded.state_dict())  # load_state_dict below copies, so no clones are needed
    state["x_embedder.weight"] = state["x_embedder.weight"][:, :keep]
    state["proj_out.weight"] = state["proj_out.weight"][:keep]
    state["proj_out.bias"] = state["proj_out.bias"][:keep]
    narrow = FluxTransformer2DModel(**DEMO_CONFIG)
    narrow.load_state_dict(state, strict=True)
    return narrow


def load_demo_transformer(dtype: torch.dtype = torch.float32):
    """The shipped, trained demo transformer, as `--model demo` loads it (a model shipped with the package:
    families/base.py `Family.load`)."""
    from ...families.flux import FLUX

    require(TRANSFORMER_DIR)
    return FLUX.load(DEMO_MODEL_ID, dtype)
