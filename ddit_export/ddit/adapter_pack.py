"""Adapter pack: everything DDiT trains, in one folder (`adapters.safetensors` + `adapters.json`).

Per extra size P the pack holds that size's embedding (with patch vector), de-embedding, residual
and its LoRA adapter. The JSON names the base model and a hash of its config, so a pack is never
silently applied to another model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..artifacts.manifest import config_hash
from ..util.atomic import atomic_folder
from .model import DDiTModel, adapter_name

PACK_FORMAT = 1
WEIGHTS = "adapters.safetensors"
META = "adapters.json"


class AdapterPackError(ValueError):
    """The adapter pack does not fit the model or the request."""


@dataclass
class PackMeta:
    family: str
    base_model: str
    config_hash: str
    base_patch: int
    patch_sizes: list[int]  # the extra sizes the pack holds
    lora_rank: int
    lora_alpha: float
    lora_targets: str
    format: int = PACK_FORMAT


def read_meta(path) -> PackMeta:
    path = Path(path)
    if not (path / META).is_file() or not (path / WEIGHTS).is_file():
        raise AdapterPackError(f"{path} is not an adapter pack (expected {META} and {WEIGHTS})")
    try:
        data = json.loads((path / META).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterPackError(f"{path / META} is not valid JSON ({err}); rewrite it with `ddit-export train`") \
            from None
    if not isinstance(data, dict):
        raise AdapterPackError(f"{path / META} must hold a JSON object, not {type(data).__name__}")
    if data.get("format") != PACK_FORMAT:
        raise AdapterPackError(f"{path}: adapter pack format {data.get('format')} is not {PACK_FORMAT}")
    fields = {f.name: f.type for f in dataclasses.fields(PackMeta)}
    unknown, missing = sorted(set(data) - set(fields)), sorted(set(fields) - set(data) - {"format"})
    if unknown or missing:
        raise AdapterPackError(f"{path / META}: unknown keys {unknown}, missing keys {missing}")
    kinds = {"int": int, "str": str, "float": (int, float), "list[int]": list}
    wrong = [k for k, t in fields.items() if k in data and not isinstance(data[k], kinds[t])
             or (t == "list[int]" and not all(isinstance(v, int) for v in data.get(k, [])))]
    if wrong:
        raise AdapterPackError(f"{path / META}: wrong value types for {wrong}")
    return PackMeta(**data)


def save_adapter_pack(model: DDiTModel, path, base_model: str) -> Path:
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    tensors = {}
    for p in model.extra_sizes:
        for key, value in model.extra[str(p)].state_dict().items():
            tensors[f"p{p}.modules.{key}"] = value
        lora = get_peft_model_state_dict(model.transformer, adapter_name=adapter_name(p))
        for key, value in lora.items():
            tensors[f"p{p}.lora.{key}"] = value
    meta = PackMeta(
        family=model.family.name,
        base_model=base_model,
        config_hash=config_hash(model.config),
        base_patch=model.base_patch,
        patch_sizes=model.extra_sizes,
        lora_rank=model.lora_rank,
        lora_alpha=model.lora_alpha,
        lora_targets=model.family.lora_targets,
    )
    with atomic_folder(path, replace=True) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps(asdict(meta), indent=2))
    return Path(path)


def check_pack(meta: PackMeta, model: DDiTModel, sizes) -> None:
    """Say exactly what does not match between a pack and the model/request."""
    problems = []
    if meta.family != model.family.name:
        problems.append(f"family {meta.family} != {model.family.name}")
    if meta.config_hash != config_hash(model.config):
        problems.append(f"it was trained for model '{meta.base_model}' (config {meta.config_hash}), "
                        f"this model's config is {config_hash(model.config)}")
    if meta.base_patch != model.base_patch:
        problems.append(f"base patch {meta.base_patch} != {model.base_patch}")
    missing = [p for p in sizes if p != model.base_patch and p not in meta.patch_sizes]
    if missing:
        problems.append(f"it has no adapter for patch size(s) {missing} (it holds {meta.patch_sizes})")
    if meta.lora_targets != model.family.lora_targets:
        problems.append("its LoRA target modules differ from this version's")
    if problems:
        raise AdapterPackError("adapter pack does not fit: " + "; ".join(problems))


def load_adapter_pack(model: DDiTModel, path) -> PackMeta:
    """Load a pack into a DDiTModel built with the pack's rank and (a subset of) its sizes."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    meta = read_meta(path)
    check_pack(meta, model, model.extra_sizes)
    if (meta.lora_rank, meta.lora_alpha) != (model.lora_rank, model.lora_alpha):
        raise AdapterPackError(
            f"adapter pack has LoRA rank {meta.lora_rank} (alpha {meta.lora_alpha}); the model was built with "
            f"rank {model.lora_rank} (alpha {model.lora_alpha})"
        )
    weights = Path(path) / WEIGHTS
    try:
        tensors = load_file(str(weights), device=str(next(model.parameters()).device))
    except Exception as err:  # safetensors' own error type: truncated or not a safetensors file
        raise AdapterPackError(f"{weights} cannot be read ({str(err).splitlines()[0]}); the file is damaged or "
                               "truncated: copy it again or retrain") from None
    for p in model.extra_sizes:
        mods = {k.split(".modules.", 1)[1]: v for k, v in tensors.items() if k.startswith(f"p{p}.modules.")}
        lora = {k.split(".lora.", 1)[1]: v for k, v in tensors.items() if k.startswith(f"p{p}.lora.")}
        expected = {k for k in model.transformer.state_dict() if f".{adapter_name(p)}." in k and "lora_" in k}
        given = {k.replace(".weight", f".{adapter_name(p)}.weight") for k in lora}
        try:
            model.extra[str(p)].load_state_dict(mods, strict=True)
            result = set_peft_model_state_dict(model.transformer, lora, adapter_name=adapter_name(p))
        except RuntimeError as err:  # torch's size-mismatch / missing-key report, many lines long
            raise AdapterPackError(f"{weights}: adapter p{p} does not match {META} or this model "
                                   f"({' '.join(str(err).split())[:240]})") from None
        unexpected = getattr(result, "unexpected_keys", None) or []
        if unexpected:
            raise AdapterPackError(f"adapter p{p} has weights this model lacks: {unexpected[:3]}")
        if expected - given:
            raise AdapterPackError(f"{weights}: adapter p{p} lacks LoRA weights {sorted(expected - given)[:3]}")
    return meta
