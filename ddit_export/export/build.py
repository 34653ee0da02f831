"""Export flow: load -> attach DDiT + adapters -> per size: merge, trace, validate, save -> manifest.

Everything is written into a temporary folder beside the output and renamed into place at the
end, so a failed or interrupted export leaves the previous output (or nothing) behind. A size
whose stage key (model weights, adapters, geometry, dtype, opset, tool versions) matches the
previous manifest and whose files still hash the same is reused instead of rebuilt.

Memory (docs/export-memory.md): sizes are built one at a time, each with its adapter merged into the
model's own weights in place (restored exactly afterwards), so an engine adds no copy of the weights;
every stage computes torch's reference outputs and writes its artifact while the model is in memory,
then the model is dropped and the artifacts are validated against those outputs. So the PyTorch model
and a runtime session's copy of the same weights are never resident at once.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import torch

from ..artifacts.iospec import IOSpec
from ..artifacts.layouts import in_bucket
from ..artifacts.manifest import (
    BucketError,
    Manifest,
    sha256_tensors,
    write_manifest,
)
from ..ddit.merge import adapter_merged_in_place, base_state_dict, build_engine
from ..util.atomic import atomic_folder, output_lock
from ..util.memory import release_freed_memory, release_weights
from .buckets import BucketReporter, bucket_label, bucket_table
from .build_cost import BuildCost, record
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
from .resources import check_resources
from .staged.build import export_staged
from .stages import STAGES, SizeJob

SPILL_DIR = ".merge-spill"  # in the export's temporary folder: the original weights while a size is merged


def _export_size(model, req: ExportRequest, patch: int, tmp: Path, old, key_base, reporter,
                 old_dir: Path | None = None) -> tuple[dict, dict]:
    """First halves of every requested stage of one size (reused artifacts need none): the reused entries, and
    per artifact kind to build, its `finish` with the cost so far."""
    # Compiled artifacts are bound to the device they were built on; ONNX graphs are not.
    keys = {b: stage_key({**key_base, "device": None if b == "onnx" else req.device}, patch, b)
            for b in req.artifacts}
    entries = {b: reuse(old, old_dir or req.out_dir, keys[b], tmp) for b in req.artifacts}
    pending = {}
    if any(e is None for e in entries.values()):
        gpu = _on_gpu(req)
        with ExitStack() as merged:
            with BuildCost(gpu) as merge_cost:
                reporter.stage(patch, "merge")
                merged.enter_context(adapter_merged_in_place(model, patch, tmp / SPILL_DIR))
                engine = build_engine(model, patch, req.latent_shape, req.text_len, already_merged=True)
                job = SizeJob(req, patch, engine, engine.sample_inputs(torch.float32, seed=patch), tmp, reporter)
                del engine
            with torch.no_grad():
                for b in req.artifacts:
                    if entries[b] is None:
                        with BuildCost(gpu) as cost:
                            pending[b] = (STAGES[b](job), [cost])
            with BuildCost(gpu) as restore_cost:
                job.engine = None  # it shares the merged weights: gone before they are restored
                merged.close()
        # The merge and the restore are the first artifact's (onnx's) cost.
        next(iter(pending.values()))[1].extend([merge_cost, restore_cost])
    return {b: {**e, "stage_key": keys[b]} for b, e in entries.items() if e is not None}, \
        {b: (finish, costs, keys[b]) for b, (finish, costs) in pending.items()}


def _on_gpu(req: ExportRequest) -> bool:
    return req.device.startswith("cuda") or "trt" in req.artifacts


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
    check_resources(req, reporter)
    req, model, adapters = load_for_export(req, reporter)
    model.to(req.device)
    weights_sha = sha256_tensors(base_state_dict(model.transformer))  # the base model, not adapters
    names = [None] + [bucket_name(h, w) for h, w in req.buckets[1:]]  # None: the default bucket, at the top
    reporter.begin([bucket_label(p, n) for n in names for p in req.patch_sizes])
    started = []
    with atomic_folder(req.out_dir, replace=True) as tmp:
        for name, (height, width) in zip(names, req.buckets):
            # Single layout: every bucket has its own engine per size (one copy of the weights per engine).
            sub = req.at(height, width)
            bucket_reporter = BucketReporter(reporter, name)
            root, old_dir = (tmp / in_bucket("", name), req.out_dir / in_bucket("", name)) if name else \
                (tmp, req.out_dir)
            old_bucket = _old_bucket(old, sub, name)
            key_base = stage_key_base(sub, weights_sha, adapters)
            halves = {p: _export_size(model, sub, p, root, old_bucket, key_base, bucket_reporter, old_dir)
                      for p in sub.patch_sizes}
            started.append((sub, name, root, bucket_reporter, halves))
        # What the manifest needs of the model; then the model goes, before any runtime loads an artifact.
        facts = SimpleNamespace(config=dict(model.config), base_patch=model.base_patch)
        release_weights(model)  # torch.onnx keeps references to them: `del` alone frees nothing
        del model
        release_freed_memory()
        per_bucket = []
        for sub, name, root, bucket_reporter, halves in started:
            entries, io = _finish_bucket(sub, root, name, halves, bucket_reporter)
            per_bucket.append((sub, entries, io))
            for scratch in (".twin", SPILL_DIR):
                shutil.rmtree(root / scratch, ignore_errors=True)
        reference = per_bucket[0][2]
        if any([t["name"] for t in io["inputs"]] != [t["name"] for t in reference["inputs"]] for *_, io in per_bucket):
            raise RuntimeError("two buckets' engines have other inputs: a bug")
        manifest = manifest_record(req, facts, adapters, weights_sha, old, "single", reference, per_bucket[0][1])
        manifest["buckets"] = bucket_table(per_bucket)
        write_manifest(tmp, manifest)
    return manifest


def _finish_bucket(req: ExportRequest, root: Path, name: str | None, halves: dict, reporter):
    """Second halves (validation against the stored reference outputs, the model gone) of one bucket's sizes:
    its entries (paths below `buckets/<name>/` for an extra bucket) and I/O spec."""
    gpu = _on_gpu(req)
    entries, specs = [], {}
    for patch in req.patch_sizes:
        done, pending = halves[patch]
        for b, (finish, costs, key) in pending.items():
            with BuildCost(gpu) as cost:
                entry = finish()
            done[b] = {**record(entry, [*costs, cost]), "stage_key": key}
        size_entries = [done[b] for b in req.artifacts]
        onnx_entry = done["onnx"]
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
