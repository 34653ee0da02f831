"""Export flow: load -> attach DDiT + adapters -> per size: merge, trace, validate, save -> manifest.

Everything is written into a temporary folder beside the output and renamed into place at the
end, so a failed or interrupted export leaves the previous output (or nothing) behind. A size
whose stage key (model weights, adapters, geometry, dtype, opset, tool versions) matches the
previous manifest and whose files still hash the same is reused instead of rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import __version__
from ..ddit.adapter_pack import check_pack, load_adapter_pack, read_meta
from ..ddit.engine import ENGINE_OUTPUT
from ..ddit.merge import base_state_dict, build_engine, cast_engine
from ..ddit.model import DEFAULT_LORA_RANK, DDiTModel
from ..families.base import config_hash
from ..util.atomic import atomic_folder
from .iospec import IOSpec
from .manifest import (
    MANIFEST,
    MANIFEST_FORMAT,
    ManifestError,
    read_manifest,
    sha256_file,
    sha256_tensors,
    tool_versions,
    verify_entry,
    write_manifest,
)
from .onnx_export import export_onnx
from .request import ExportRequest
from .validate import require_valid, validate_onnx

DEFAULT_TAU = 1e-3
DEFAULT_RHO = 0.4


class ExportInputError(ValueError):
    """The request cannot be built as asked (bad input, not a failure of the tools)."""


class Reporter:
    """Progress hooks; the CLI draws them, library callers may ignore them."""

    def begin(self, sizes: list[int]) -> None: ...
    def stage(self, patch: int, text: str) -> None: ...
    def done(self, patch: int, entry: dict) -> None: ...
    def warn(self, text: str) -> None: ...


def _previous_manifest(req: ExportRequest) -> dict | None:
    out = req.out_dir
    if not out.exists():
        return None
    if not (out / MANIFEST).exists():
        if any(out.iterdir()) and not req.force:
            raise ExportInputError(f"--out {out} exists, is not empty and holds no manifest; pass --force or another --out")
        return None
    try:
        old = read_manifest(out)
    except ManifestError:
        if req.force:
            return None
        raise
    if old.get("request") != req.identity() and not req.force:
        changed = sorted(k for k, v in req.identity().items() if old.get("request", {}).get(k) != v)
        raise ExportInputError(
            f"--out {out} holds engines built from other inputs ({', '.join(changed)} differ); "
            "pass --force to rebuild it, or choose another --out"
        )
    return None if req.force else old


def _stage_key(base: dict, patch: int) -> str:
    return hashlib.sha256(json.dumps({**base, "patch": patch}, sort_keys=True).encode()).hexdigest()[:20]


def _reuse(old: dict | None, old_dir: Path, key: str, tmp: Path) -> dict | None:
    """Carry a still-valid artifact of the previous build into the new folder (hard link when possible)."""
    if not old:
        return None
    for entry in old["engines"]:
        if entry.get("stage_key") != key:
            continue
        try:
            verify_entry(old_dir, entry)
        except ManifestError:
            return None
        for rel in entry["files"]:
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(old_dir / rel, dst)
            except OSError:
                shutil.copy2(old_dir / rel, dst)
        return {**entry, "reused": True}
    return None


def _export_size(model, req: ExportRequest, patch: int, tmp: Path, key: str, reporter: Reporter) -> tuple[dict, IOSpec]:
    started = time.perf_counter()
    reporter.stage(patch, "merge")
    engine = build_engine(model, patch, req.latent_shape, req.text_len)
    inputs = engine.sample_inputs(torch.float32, seed=patch)
    rel = f"onnx/p{patch}.onnx"
    path = tmp / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    half = req.torch_dtype != torch.float32
    # ONNX Runtime on CPU has no bf16/fp16 math: a half engine is validated through its fp32 twin,
    # traced from the same merged module, and (on CUDA) directly with relative metrics.
    twin = tmp / ".twin" / f"p{patch}.onnx" if half else path
    twin.parent.mkdir(parents=True, exist_ok=True)
    reporter.stage(patch, "export fp32" + (" twin" if half else ""))
    spec = export_onnx(engine, inputs, [ENGINE_OUTPUT], twin, opset=req.opset, external_data=req.external_data)
    reporter.stage(patch, "validate")
    result = validate_onnx(engine, inputs, twin, atol=req.atol, rtol=req.rtol, min_cosine=req.min_cosine)
    require_valid(result, f"patch size {patch} ({'fp32 twin' if half else 'fp32'})")
    validation = {**result.to_json(), "validated_as": "fp32-twin" if half else "fp32"}
    if half:
        shutil.rmtree(twin.parent, ignore_errors=True)
        reporter.stage(patch, f"export {req.dtype}")
        engine = cast_engine(engine, req.torch_dtype)
        keep = req.family_obj.float32_inputs
        inputs = {k: v if k in keep else v.to(req.torch_dtype) for k, v in inputs.items()}
        spec = export_onnx(engine, inputs, [ENGINE_OUTPUT], path, opset=req.opset, external_data=req.external_data)
    files = [rel] + ([f"{rel}.data"] if (tmp / f"{rel}.data").exists() else [])
    entry = {
        "patch_size": patch,
        "backend": "onnx",
        "files": files,
        "sha256": [sha256_file(tmp / f) for f in files],
        "bytes": sum((tmp / f).stat().st_size for f in files),
        "tokens": req.family_obj.tokens(req.latent_shape, patch),
        # Padding cost where the block does not divide the grid: tokens beyond the grid's exact area.
        "padded_grid": list(req.family_obj.padded_shape(req.latent_shape, patch)[-2:]),
        "padding_tokens": round(req.family_obj.padding_tokens(req.latent_shape, patch), 3),
        "validation": validation,
        "export_seconds": round(time.perf_counter() - started, 3),
        "stage_key": key,
    }
    return entry, spec


def load_ddit_model(req: ExportRequest, reporter: Reporter) -> tuple[DDiTModel, dict]:
    fam = req.family_obj
    pack = read_meta(req.adapters) if req.adapters else None
    transformer = fam.load(req.model, torch.float32)
    model = DDiTModel(
        fam, transformer, req.patch_sizes,
        lora_rank=pack.lora_rank if pack else DEFAULT_LORA_RANK,
        lora_alpha=pack.lora_alpha if pack else None,
    )
    if pack:
        check_pack(pack, model, req.patch_sizes)
        load_adapter_pack(model, req.adapters)
        adapters = {"path": str(req.adapters), "sha256": sha256_file(Path(req.adapters) / "adapters.safetensors"),
                    "trained": True}
    else:
        adapters = {"path": None, "sha256": None, "trained": not model.extra_sizes}
        if model.extra_sizes:
            reporter.warn(
                f"no --adapters: sizes {model.extra_sizes} use UNTRAINED DDiT modules (initialised, LoRA zero). "
                "Their outputs are only an approximation of the base model; fine for latency work, "
                "not for images. Train adapters with `ddit-export train`."
            )
    return model.eval(), adapters


def export_engines(req: ExportRequest, reporter: Reporter | None = None) -> dict:
    reporter = reporter or Reporter()
    req.check_out_writable()
    old = _previous_manifest(req)
    model, adapters = load_ddit_model(req, reporter)
    weights_sha = sha256_tensors(base_state_dict(model.transformer))  # the base model, not adapters
    key_base = {
        "weights": weights_sha, "adapters": adapters["sha256"], "request": req.identity(), "opset": req.opset,
        "external_data": req.external_data, "tools": tool_versions(), "format": MANIFEST_FORMAT,
    }
    reporter.begin(list(req.patch_sizes))
    entries, specs = [], {}
    with atomic_folder(req.out_dir, replace=True) as tmp:
        for patch in req.patch_sizes:
            key = _stage_key(key_base, patch)
            entry = _reuse(old, req.out_dir, key, tmp)
            if entry is None:
                with torch.no_grad():
                    entry, specs[patch] = _export_size(model, req, patch, tmp, key, reporter)
            else:
                specs[patch] = IOSpec.from_onnx(tmp / entry["files"][0])
            entries.append(entry)
            reporter.done(patch, entry)
        reference = specs[req.patch_sizes[0]]
        for patch, spec in specs.items():
            if spec.to_json() != reference.to_json():
                raise RuntimeError(f"engine p{patch} has other inputs/outputs than p{req.patch_sizes[0]}: a bug")
        manifest = {
            "format": MANIFEST_FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "family": req.family,
            "request": req.identity(),
            "model": {"id": req.model, "config": dict(model.config), "config_hash": config_hash(model.config),
                      "weights_sha256": weights_sha},
            "adapters": adapters,
            "base_patch": model.base_patch,
            "patch_sizes": list(req.patch_sizes),
            "latent_shape": list(req.latent_shape),
            "dtype": req.dtype,
            "opset": req.opset,
            "io": reference.to_json(),
            "engines": entries,
            "scheduler": {"tau": DEFAULT_TAU, "rho": DEFAULT_RHO, "warmup_patch": model.base_patch,
                          "calibration": None},
            "tools": tool_versions() | {"ddit-export": __version__},
        }
        write_manifest(tmp, manifest)
    return manifest
