"""Export flow: load -> attach DDiT + adapters -> per size: merge, trace, validate, save -> manifest.

Everything is written into a temporary folder beside the output and renamed into place at the
end, so a failed or interrupted export leaves the previous output (or nothing) behind. A size
whose stage key (model weights, adapters, geometry, dtype, opset, tool versions) matches the
previous manifest and whose files still hash the same is reused instead of rebuilt.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..artifacts.iospec import IOSpec
from ..artifacts.manifest import (
    sha256_tensors,
    write_manifest,
)
from ..ddit.merge import base_state_dict, build_engine
from ..util.atomic import atomic_folder, output_lock
from .engine_folder import (
    Reporter,
    load_for_export,
    manifest_record,
    previous_manifest,
    reuse,
    stage_key,
    stage_key_base,
)
from .experts import export_experts
from .request import ExportRequest
from .staged.build import export_staged
from .stages import SizeJob, aoti_stage, onnx_stage, trt_stage


def _export_size(model, req: ExportRequest, patch: int, tmp: Path, old, key_base, reporter) -> list[dict]:
    """Every requested backend of one size; unchanged artifacts of the previous build are reused."""
    # Compiled artifacts are bound to the device they were built on; ONNX graphs are not.
    keys = {b: stage_key({**key_base, "device": None if b == "onnx" else req.device}, patch, b)
            for b in req.backends}
    entries = {b: reuse(old, req.out_dir, keys[b], tmp) for b in req.backends}
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


def export_engines(req: ExportRequest, reporter: Reporter | None = None) -> dict:
    experts = req.family_obj.experts_of(req.model) if req.model else None
    if req.layout == "staged" and experts is None:
        return export_staged(req, reporter)
    reporter = reporter or Reporter()
    if experts is not None:  # Wan 2.2 A14B: each expert's engines, one folder (export/experts.py)
        return export_experts(req, reporter, experts, _export_one)
    return _export_one(req, reporter)


def _export_one(req: ExportRequest, reporter: Reporter) -> dict:
    req.check_out_writable()
    # One writer per --out from reading the old manifest to the final rename: a concurrent export
    # waits, then reuses this one's engines or is refused for other inputs, as if run afterwards.
    with output_lock(req.out_dir, on_wait=reporter.warn):
        return _export_locked(req, reporter)


def _export_locked(req: ExportRequest, reporter: Reporter) -> dict:
    old = previous_manifest(req)
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
