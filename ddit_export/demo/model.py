"""The demo transformer: its config, where its files live, and loading it offline.

Sized by measurement (ONNX Runtime CPU, 32x32 latent, 4 text tokens): hidden 128 (2 heads x 64),
one double-stream and two single-stream blocks. At 256 base tokens the untrained engines of sizes 4
and 8 (64 and 16 tokens) ran 2.4x and 3.8x faster per call than size 2 on the loaded build machine,
and the model trains from scratch in about 20 minutes on 2 shared CPU cores. Known limit: a size-8
token holds 16*8*8 = 1024 features but the hidden width is 128 (FLUX.1: 3072), so the coarse sizes
cannot carry per-pixel detail and noise; their distillation loss stays well above the base's.

Tried and not shipped (2026-12-02): the RGB pixels as a 3-channel latent (in_channels 12, no zero
channels; the FLUX family supports any in_channels / 4). Its students came much closer to the
teacher (size-8 velocity MSE 0.023-0.045 on early steps against 0.08-0.10 here), but the base itself
fell to 85.4% class accuracy at hidden 192 x 3000 steps and 77.1% at hidden 128 x 700 steps, against
97.9% for this model, on the same 48 seeds: many samples came out as background only.
"""

from __future__ import annotations

from pathlib import Path

import torch

# No guidance embedding: the demo samples without CFG or embedded guidance (one call per step).
DEMO_CONFIG = dict(
    patch_size=1,
    in_channels=64,
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

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "demo"
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


def build_demo_transformer(seed: int = 0):
    """A freshly initialised demo transformer (what `tools/train_demo.py` starts from)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(**DEMO_CONFIG)


def load_demo_transformer(dtype: torch.dtype = torch.float32):
    """The shipped, trained demo transformer; its config names it "demo" (a plain string, JSON-safe)."""
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_pretrained(str(require(TRANSFORMER_DIR)), torch_dtype=dtype)
    model.register_to_config(_name_or_path=DEMO_MODEL_ID)
    return model
