"""The demo's "text encoder": a fixed table from class name to FLUX conditioning tensors.

Each class gets `encoder_hidden_states` [DEMO_TEXT_LEN, joint_attention_dim] and `pooled_projections`
[pooled_projection_dim], drawn once from a seeded generator and stored with the model
(`class_embeddings.safetensors`, in the trainer's `--prompt-embeds` layout, class names in the
metadata). The model learns to read them; they never change after training.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...runtime.conditioning import Conditioning
from .classes import CLASS_NAMES, class_index
from .model import CLASS_TABLE, DEMO_CONFIG, DEMO_TEXT_LEN, require

# The first demo had these six classes; their rows are drawn first, exactly as then, so the classes
# added later (the textured ones) extend the table without changing what the model learned for them.
FIRST_CLASSES = 6


def make_class_table(seed: int = 1234) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    groups = [FIRST_CLASSES, len(CLASS_NAMES) - FIRST_CLASSES]
    states, pooled = [], []
    for n in groups:
        states.append(torch.randn((n, DEMO_TEXT_LEN, DEMO_CONFIG["joint_attention_dim"]), generator=gen))
        pooled.append(torch.randn((n, DEMO_CONFIG["pooled_projection_dim"]), generator=gen))
    return {"encoder_hidden_states": torch.cat(states), "pooled_projections": torch.cat(pooled)}


def save_class_table(table: dict[str, torch.Tensor], path: Path = CLASS_TABLE) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in table.items()}, str(path), metadata={"classes": json.dumps(CLASS_NAMES)})
    return path


def load_class_table(path: Path = CLASS_TABLE) -> tuple[list[str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    with safe_open(str(require(path)), framework="pt") as fh:
        names = json.loads(fh.metadata()["classes"])
        table = {k: fh.get_tensor(k) for k in fh.keys()}
    return names, table


def class_conditions(labels: torch.Tensor, table: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-sample conditioning rows for class indices `labels` (training batches)."""
    return {k: v[labels] for k, v in table.items()}


def demo_conditioning(prompt: str, batch: int = 1) -> Conditioning:
    """Runtime conditioning for a class name, shaped for engines of batch `batch`."""
    names, table = load_class_table()
    if names != CLASS_NAMES:
        raise ValueError(f"{CLASS_TABLE} lists classes {names}, this version expects {CLASS_NAMES}")
    i = class_index(prompt)
    states = table["encoder_hidden_states"][i : i + 1].expand(batch, -1, -1)
    pooled = table["pooled_projections"][i : i + 1].expand(batch, -1)
    return Conditioning(states, pooled, guidance=None, source=f"demo class table ({CLASS_NAMES[i]})")
