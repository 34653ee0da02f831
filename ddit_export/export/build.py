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
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import __version__
from ..artifacts.iospec import IOSpec
from ..artifacts.manifest import (
    MANIFEST,
    MANIFEST_FORMAT,
    ManifestError,
    read_manifest,
    sha256_tensors,
    tool_versions,
    verify_entry,
    write_manifest,
)
from ..ddit.loading import load_ddit_model
from ..ddit.merge import base_state_dict, build_engine
from ..ddit.model import DDiTModel
from ..families.base import config_hash
from ..runtime.rules import DEFAULT_RULE, RULES
from ..util.atomic import atomic_folder, output_lock
from .request import ExportRequest
from .stages import SizeJob, aoti_stage, onnx_stage, trt_stage


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
            raise ExportInputError(
                f"--out {out} exists, is not empty and holds no manifest; pass --force or another --out"
            )
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


DEFAULT_TAU, DEFAULT_RHO = 1e-3, 0.4  # the paper's defaults (ddit_method.md)


def _scheduler_defaults(req: ExportRequest, old: dict | None, base_patch: int, weights: str, adapters) -> dict:
    """tau/rho as asked; otherwise a calibration of the same model and adapters survives a re-export."""
    fresh = {"tau": DEFAULT_TAU, "rho": DEFAULT_RHO, "warmup_patch": base_patch, "calibration": None}
    same_model = old and old["model"].get("weights_sha256") == weights and old["adapters"].get("sha256") == adapters
    if same_model and req.tau is None and req.rho is None and old["scheduler"].get("calibration"):
        return old["scheduler"]
    rule = req.rule or DEFAULT_RULE
    preset = RULES[rule]
    fresh["rule"] = rule
    fresh["tau"] = DEFAULT_TAU if req.tau is None else req.tau
    fresh["rho"] = preset.get("rho", DEFAULT_RHO) if req.rho is None else req.rho
    if req.scheduler_sizes is not None:  # e.g. the demo's tuned 2,4 of engines 2,4,8
        fresh["patch_sizes"] = list(req.scheduler_sizes)
    if preset["warmup"] == "coarsest":
        fresh["warmup_patch"] = max(req.scheduler_sizes or req.patch_sizes)
    return fresh


def _stage_key(base: dict, patch: int, backend: str) -> str:
    text = json.dumps({**base, "patch": patch, "backend": backend}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


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
        carry_files(old_dir, entry["files"], tmp)
        return {**entry, "reused": True}
    return None


def carry_files(old_dir: Path, files: list[str], tmp: Path) -> None:
    """Hard-link (or copy) files of the previous build into the new folder; one already there is kept."""
    for rel in files:
        dst = tmp / rel
        if dst.exists():  # a file several entries share (the staged layout's trunk)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(old_dir / rel, dst)
        except OSError:
            shutil.copy2(old_dir / rel, dst)


def _export_size(model, req: ExportRequest, patch: int, tmp: Path, old, key_base, reporter) -> list[dict]:
    """Every requested backend of one size; unchanged artifacts of the previous build are reused."""
    # Compiled artifacts are bound to the device they were built on; ONNX graphs are not.
    keys = {b: _stage_key({**key_base, "device": None if b == "onnx" else req.device}, patch, b)
            for b in req.backends}
    entries = {b: _reuse(old, req.out_dir, keys[b], tmp) for b in req.backends}
    if any(e is None for e in entries.values()):
        reporter.stage(patch, "merge")
        engine = build_engine(model, patch, req.latent_shape, req.text_len)
        job = SizeJob(req, patch, engine, engine.sample_inputs(torch.float32, seed=patch), tmp, reporter)
        with torch.no_grad():
            if entries["onnx"] is None:
                entries["onnx"] = onnx_stage(job)
            if "aoti" in entries and entries["aoti"] is None:
                entries["aoti"] = aoti_stage(job)
            if "trt" in entries and entries["trt"] is None:
                entries["trt"] = trt_stage(job, entries["onnx"])
    return [{**entries[b], "stage_key": keys[b]} for b in req.backends]


def stage_key_base(req: ExportRequest, weights_sha: str, adapters: dict) -> dict:
    """What every artifact of an export depends on (each stage key adds its size and backend)."""
    return {
        "weights": weights_sha, "adapters": adapters["sha256"], "request": req.identity(), "opset": req.opset,
        "external_data": req.external_data, "tools": tool_versions(), "format": MANIFEST_FORMAT,
    }


def manifest_record(req: ExportRequest, model, adapters: dict, weights_sha: str, old, layout: str, io: dict,
                    entries: list[dict]) -> dict:
    """The manifest of a finished export (both layouts)."""
    return {
        "format": MANIFEST_FORMAT,
        "layout": layout,
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
        "io": io,
        "engines": entries,
        "scheduler": _scheduler_defaults(req, old, model.base_patch, weights_sha, adapters["sha256"]),
        "tools": tool_versions() | {"ddit-export": __version__},
    }


def load_for_export(req: ExportRequest, reporter: Reporter) -> tuple[ExportRequest, DDiTModel, dict]:
    """The request's model (`ddit.loading`), and the request completed with the model's latent channels."""
    loaded = load_ddit_model(req.family_obj, req.model, req.patch_sizes, req.adapters, reporter.warn)
    return replace(req, latent_channels=loaded.latent_channels), loaded.model, loaded.adapters


def export_engines(req: ExportRequest, reporter: Reporter | None = None) -> dict:
    if req.layout == "staged":
        from .staged_build import export_staged

        return export_staged(req, reporter)
    reporter = reporter or Reporter()
    req.check_out_writable()
    # One writer per --out from reading the old manifest to the final rename: a concurrent export
    # waits, then reuses this one's engines or is refused for other inputs, as if run afterwards.
    with output_lock(req.out_dir, on_wait=reporter.warn):
        return _export_locked(req, reporter)


def _export_locked(req: ExportRequest, reporter: Reporter) -> dict:
    old = _previous_manifest(req)
    req, model, adapters = load_for_export(req, reporter)
    model.to(req.device)
    weights_sha = sha256_tensors(base_state_dict(model.transformer))  # the base model, not adapters
    key_base = stage_key_base(req, weights_sha, adapters)
    reporter.begin(list(req.patch_sizes))
    entries, specs = [], {}
    with atomic_folder(req.out_dir, replace=True) as tmp:
        for patch in req.patch_sizes:
            size_entries = _export_size(model, req, patch, tmp, old, key_base, reporter)
            onnx_entry = next(e for e in size_entries if e["backend"] == "onnx")
            specs[patch] = IOSpec.from_onnx(tmp / onnx_entry["files"][0])
            entries.extend(size_entries)
            reporter.done(patch, onnx_entry)
        reference = specs[req.patch_sizes[0]]
        for patch, spec in specs.items():
            if spec.to_json() != reference.to_json():
                raise RuntimeError(f"engine p{patch} has other inputs/outputs than p{req.patch_sizes[0]}: a bug")
        manifest = manifest_record(req, model, adapters, weights_sha, old, "single", reference.to_json(), entries)
        write_manifest(tmp, manifest)
    return manifest
