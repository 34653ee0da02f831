"""The demo transformer: its config, where its files live, and loading it offline.

A FluxTransformer2DModel on a 3 x 32 x 32 pixel latent (demo/codec.py): in_channels 12 (3 channels x
2 x 2), hidden 192 (3 heads x 64), one double-stream and two single-stream blocks, 4 class tokens.
The width is sized to the coarsest token: a size-8 token holds 3 * 8 * 8 = 192 features, so the
hidden state can carry all of it (FLUX.1: 1024 features per size-8 token, width 3072). The first
demo (hidden 128 on FLUX's 16-channel latent, 13 channels of pure noise) could not: 1024 features
per size-8 token through 128 dims, and its coarse sizes stayed far from the teacher.
At 256 base tokens, ONNX Runtime CPU ran the size-4 and size-8 engines about 3.3x and 6.5x faster
per call than size 2 (measured on the 2-core build machine, see the issue notes).
"""

from __future__ import annotations

from pathlib import Path

import torch

# No guidance embedding: the demo samples without CFG or embedded guidance (one call per step).
DEMO_CONFIG = dict(
    patch_size=1,
    in_channels=12,  # 3 latent channels (RGB) x 2 x 2
    num_layers=1,
    num_single_layers=2,
    attention_head_dim=64,
    num_attention_heads=3,
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
