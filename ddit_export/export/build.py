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
from ..artifacts.layouts import in_bucket
from ..artifacts.manifest import (
    BucketError,
    Manifest,
    sha256_tensors,
    write_manifest,
)
from ..ddit.merge import base_state_dict, build_engine
from ..util.atomic import atomic_folder, output_lock
from .buckets import BucketReporter, bucket_label, bucket_table
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
from .request import ExportRequest, bucket_name
from .staged.build import export_staged
from .stages import SizeJob, aoti_stage, onnx_stage, trt_stage


def _export_size(model, req: ExportRequest, patch: int, tmp: Path, old, key_base, reporter,
                 old_dir: Path | None = None) -> list[dict]:
    """Every requested backend of one size; unchanged artifacts of the previous build are reused."""
    # Compiled artifacts are bound to the device they were built on; ONNX graphs are not.
    keys = {b: stage_key({**key_base, "device": None if b == "onnx" else req.device}, patch, b)
            for b in req.backends}
    entries = {b: reuse(old, old_dir or req.out_dir, keys[b], tmp) for b in req.backends}
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
    names = [None] + [bucket_name(h, w) for h, w in req.buckets[1:]]  # None: the default bucket, at the top
    reporter.begin([bucket_label(p, n) for n in names for p in req.patch_sizes])
    per_bucket = []
    with atomic_folder(req.out_dir, replace=True) as tmp:
        for name, (height, width) in zip(names, req.buckets):
            # Single layout: every bucket has its own engine per size (one copy of the weights per engine).
            sub = req.at(height, width)
            entries, io = _export_bucket(model, sub, tmp, name, old, stage_key_base(sub, weights_sha, adapters),
                                         BucketReporter(reporter, name), req.out_dir)
            per_bucket.append((sub, entries, io))
        reference = per_bucket[0][2]
        if any([t["name"] for t in io["inputs"]] != [t["name"] for t in reference["inputs"]] for *_, io in per_bucket):
            raise RuntimeError("two buckets' engines have other inputs: a bug")
        manifest = manifest_record(req, model, adapters, weights_sha, old, "single", reference, per_bucket[0][1])
        manifest["buckets"] = bucket_table(per_bucket)
        write_manifest(tmp, manifest)
    return manifest


def _export_bucket(model, req: ExportRequest, tmp: Path, name: str | None, old, key_base, reporter, out_dir: Path):
    """Every size of one bucket into `tmp` (below `buckets/<name>/` for an extra bucket): entries, I/O spec."""
    root, old_dir = (tmp / in_bucket("", name), out_dir / in_bucket("", name)) if name else (tmp, out_dir)
    old_bucket = _old_bucket(old, req, name)
    entries, specs = [], {}
    for patch in req.patch_sizes:
        size_entries = _export_size(model, req, patch, root, old_bucket, key_base, reporter, old_dir)
        onnx_entry = next(e for e in size_entries if e["backend"] == "onnx")
        specs[patch] = IOSpec.from_onnx(root / onnx_entry["files"][0])
        entries.extend({**e, "files": [in_bucket(f, name) for f in e["files"]]} for e in size_entries)
        reporter.done(patch, onnx_entry)
    reference = specs[req.patch_sizes[0]]
    for patch, spec in specs.items():
        if spec.to_json() != reference.to_json():
            raise RuntimeError(f"engine p{patch} has other inputs/outputs than p{req.patch_sizes[0]}: a bug")
    return entries, reference.to_json()


def _old_bucket(old, req: ExportRequest, name: str | None):
    """The previous build's entries of this bucket, with paths relative to the bucket's folder (for `reuse`)."""
    if not old or name is None:
        return old
    try:
        view = Manifest(old).at_bucket(req.height, req.width)
    except BucketError:
        return None
    prefix = in_bucket("", name)
    return {**view, "engines": [{**e, "files": [f.removeprefix(prefix) for f in e["files"]]}
                                for e in view["engines"] if all(f.startswith(prefix) for f in e["files"])]}
