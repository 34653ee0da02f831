"""Load a model as a DDiT model: the family's transformer, DDiT modules for every size, adapters.

One loader for the export, the torch backend (which rebuilds the engines a manifest was made from) and
training (which loads the teacher in its training dtype and LoRA rank). Explicit arguments in, what was
learned out (`LoadedModel`); nothing passed in is changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..artifacts.manifest import sha256_file
from ..families.base import Family
from .adapter_pack import WEIGHTS, check_pack, load_adapter_pack, read_meta
from .model import DEFAULT_LORA_RANK, DDiTModel


@dataclass(frozen=True)
class LoadedModel:
    model: DDiTModel  # eval mode, on the CPU, in the dtype asked for (fp32 by default)
    adapters: dict  # what the manifest records: {"path", "sha256", "trained"}
    latent_channels: int  # of this model's latent (the family's, unless its config says otherwise)


def load_ddit_model(family: Family, model_id: str, patch_sizes, adapters: str | None = None,
                    warn: Callable[[str], None] | None = None, *, dtype: torch.dtype = torch.float32,
                    lora_rank: int | None = None, variant: str | None = None) -> LoadedModel:
    """``family``'s ``model_id`` (weights in ``dtype``) with DDiT modules for ``patch_sizes`` and the adapter
    pack ``adapters``.

    The LoRA rank is ``lora_rank`` when given (training: a pack of another rank is then refused), else
    the pack's, else the default. Without a pack the extra sizes are untrained (initialised, LoRA zero):
    ``warn`` says so. ``variant``: the weights variant to load (diffusers' ``variant``, e.g. fp16).
    """
    pack = read_meta(adapters) if adapters else None
    transformer = family.load(model_id, dtype, variant)
    if lora_rank is not None:
        rank, alpha = lora_rank, None
    else:
        rank, alpha = (pack.lora_rank, pack.lora_alpha) if pack else (DEFAULT_LORA_RANK, None)
    model = DDiTModel(family, transformer, patch_sizes, lora_rank=rank, lora_alpha=alpha)
    if pack:
        check_pack(pack, model, patch_sizes)
        load_adapter_pack(model, adapters)
        record = {"path": str(adapters), "sha256": sha256_file(Path(adapters) / WEIGHTS), "trained": True}
    else:
        record = {"path": None, "sha256": None, "trained": not model.extra_sizes}
        if model.extra_sizes and warn is not None:
            warn(
                f"no --adapters: sizes {model.extra_sizes} use UNTRAINED DDiT modules (initialised, LoRA zero). "
                "Their outputs are only an approximation of the base model; fine for latency work, "
                "not for images. Train adapters with `ddit-export train`."
            )
    return LoadedModel(model.eval(), record, family.latent_channels_of(transformer.config))
