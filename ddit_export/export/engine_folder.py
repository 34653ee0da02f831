"""What both layouts' exports share: progress hooks, the previous build (refused, reused), stage keys,
the manifest record and the model load.

`build.py` exports single-engine folders and hands staged ones to `staged/build.py`; both build on this.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..artifacts.manifest import (
    MANIFEST,
    MANIFEST_FORMAT,
    Manifest,
    ManifestError,
    config_hash,
    read_manifest,
    tool_versions,
    verify_entry,
)
from ..ddit.loading import load_ddit_model
from ..ddit.model import DDiTModel
from ..runtime.rules import RULES
from ..runtime.scheduler import DEFAULT_RHO, DEFAULT_RULE, DEFAULT_TAU
from .request import ExportRequest


class ExportInputError(ValueError):
    """The request cannot be built as asked (bad input, not a failure of the tools)."""


class Reporter:
    """Progress hooks; the CLI draws them, library callers may ignore them."""

    def begin(self, sizes: list[int]) -> None: ...
    def stage(self, patch: int, text: str) -> None: ...
    def done(self, patch: int, entry: dict) -> None: ...
    def warn(self, text: str) -> None: ...


def previous_manifest(req: ExportRequest) -> dict | None:
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


def scheduler_defaults(req: ExportRequest, old: dict | None, base_patch: int, weights: str, adapters) -> dict:
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
    if req.error_model is not None:
        fresh["error_model"] = req.error_model
    return fresh


def stage_key(base: dict, patch: int, backend: str) -> str:
    text = json.dumps({**base, "patch": patch, "backend": backend}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def reuse(old: dict | None, old_dir: Path, key: str, tmp: Path) -> dict | None:
    """Carry a still-valid artifact of the previous build into the new folder (hard link when possible)."""
    if not old:
        return None
    for entry in Manifest(old).all_engines:  # every bucket's
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


def stage_key_base(req: ExportRequest, weights_sha: str, adapters: dict) -> dict:
    """What every artifact of an export depends on (each stage key adds its size and backend)."""
    return {
        "weights": weights_sha, "adapters": adapters["sha256"], "request": req.identity(), "opset": req.opset,
        "external_data": req.external_data, "tools": tool_versions(), "format": MANIFEST_FORMAT,
    }


def manifest_record(req: ExportRequest, model, adapters: dict, weights_sha: str, old, layout: str, io: dict,
                    entries: list[dict]) -> dict:
    """The manifest of a finished export (both layouts)."""
    record = {
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
        "scheduler": scheduler_defaults(req, old, model.base_patch, weights_sha, adapters["sha256"]),
        "tools": tool_versions() | {"ddit-export": __version__},
    }
    # A step-cache fit (`calibrate --cache`) describes the model, not the build: it survives a re-export of the
    # same weights and adapters, as a scheduler calibration does.
    same_model = old and old["model"].get("weights_sha256") == weights_sha and \
        old.get("adapters", {}).get("sha256") == adapters["sha256"]
    if same_model and old.get("cache"):
        record["cache"] = old["cache"]
    return record


def load_for_export(req: ExportRequest, reporter: Reporter) -> tuple[ExportRequest, DDiTModel, dict]:
    """The request's model (`ddit.loading`), and the request completed with the model's latent channels."""
    loaded = load_ddit_model(req.family_obj, req.model, req.patch_sizes, req.adapters, reporter.warn,
                             variant=req.variant)
    req.family_obj.apply_request(loaded.model.transformer, req.identity())
    return replace(req, latent_channels=loaded.latent_channels), loaded.model, loaded.adapters


