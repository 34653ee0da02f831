"""Export flow of the staged layout: per size an embed and a head graph, ONE trunk graph for all sizes.

Same guarantees as the single layout (build.py): every part and the whole chain of every size is
validated against PyTorch through Polygraphy with the same tolerances, every file is hashed into
the manifest, the folder is written atomically, and an unchanged build is reused. The trunk holds
the stacked adapters of every size, so a change of any size rebuilds all parts (reuse is all or
nothing). The manifest lists one entry per size (`files`: embed, trunk, head), so tools that read
per-size entries (inspect, bench) keep working; `layout: staged` routes backends to the chain.

Memory (docs/export-memory.md): the torch chain is traced once per size and bucket (its named values
are the reference outputs of every part), the graphs are written, and the model is dropped before ONNX
Runtime opens them for validation, so the model and a session's copy of the trunk are never
resident at once. AOTInductor and TensorRT parts still validate against the torch modules.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch

from ...artifacts.iospec import IOSpec
from ...artifacts.layouts import BUCKETS_DIR, STAGED_DIR, TRUNK_ONNX, in_bucket, onnx_name, onnx_relpath
from ...artifacts.manifest import (
    sha256_file,
    sha256_tensors,
    write_manifest,
)
from ...ddit.engine import PatchSizeEngine
from ...ddit.merge import base_state_dict
from ...ddit.staged import StagedModel, build_staged, cast_staged, family_parts
from ...util.atomic import atomic_folder, output_lock
from ...util.memory import release_freed_memory, release_weights
from ..buckets import BucketReporter, bucket_label, bucket_table
from ..build_cost import BuildCost, record
from ..engine_folder import (
    ExportInputError,
    Reporter,
    load_for_export,
    manifest_record,
    previous_manifest,
    reuse,
    stage_key,
    stage_key_base,
)
from ..onnx_export import export_onnx
from ..request import ExportRequest, bucket_name
from ..resources import check_resources
from ..stages import HALF_TOLERANCES
from ..validate import require_valid, validate_onnx_reference
from .onnx_export import export_dynamic_trunk, graph_io
from .validate import numpy_outputs, validate_chain_reference, validate_trunk_reference

# Measured on ONNX Runtime CPU (docs/staged.md): one dynamic-token trunk session beats per-size static
# graphs sharing weights in memory and speed. The trunk is one session, so pre-packing copies nothing
# twice; it is kept on (as in single engines) for speed. Embeds/heads share weights, so theirs is off.
ORT_CHOICE = {"trunk": "dynamic-token-axis", "prepacking": True, "measured_in": "docs/staged.md"}


class _HeldWarnings(Reporter):
    def __init__(self):
        self.texts = []

    def warn(self, text: str) -> None:
        self.texts.append(text)


def export_staged(req: ExportRequest, reporter: Reporter | None = None) -> dict:
    reporter = reporter or Reporter()
    req.check_out_writable()
    with output_lock(req.out_dir, on_wait=reporter.warn):  # one writer per --out, as for single engines
        return _export_staged_locked(req, reporter)


def _export_staged_locked(req: ExportRequest, reporter: Reporter) -> dict:
    old = previous_manifest(req)
    check_resources(req, reporter)
    held = _HeldWarnings()  # the untrained-sizes warning only once the model is known to fit the layout
    req, model, adapters = load_for_export(req, held)
    grid = [name for name, _ in req.family_obj.grid_specs(model.config, req.latent_shape)]
    if grid:  # its embed part and trunk take the latent and text only (docs/variants.md)
        raise ExportInputError(f"the staged layout does not take conditioning on the latent grid yet ({', '.join(grid)}"
                               " of this model: FLUX Control/Fill/Kontext, Wan I2V); export it with --layout single")
    for text in held.texts:
        reporter.warn(text)
    model.to(req.device)
    weights_sha = sha256_tensors(base_state_dict(model.transformer))
    key_base = {**stage_key_base(req, weights_sha, adapters), "layout": "staged", "sizes": list(req.patch_sizes)}
    names = [None] + [bucket_name(h, w) for h, w in req.buckets[1:]]  # None: the default bucket, at the top
    subs = [req.at(h, w) for h, w in req.buckets]
    keys = {(n, p, b): stage_key(key_base if n is None else {**key_base, "bucket": n}, p, b)
            for n in names for p in req.patch_sizes for b in req.artifacts}
    facts = SimpleNamespace(config=dict(model.config), base_patch=model.base_patch)  # what the manifest needs
    reporter.begin([bucket_label(p, n) for n in names for p in req.patch_sizes])
    with atomic_folder(req.out_dir, replace=True) as tmp:
        found = [reuse(old, req.out_dir, key, tmp) for key in keys.values()] if old else []
        if found and all(e is not None for e in found):
            per_bucket = [[e for e in found if e["stage_key"] == keys[n, e["patch_size"], e["backend"]]]
                          for n in names]
            del model
        else:
            shutil.rmtree(tmp / STAGED_DIR, ignore_errors=True)
            shutil.rmtree(tmp / BUCKETS_DIR, ignore_errors=True)
            gpu = req.device.startswith("cuda") or "trt" in req.artifacts
            with BuildCost(gpu) as cost:
                # One staged model per bucket, all on the same modules: only the RoPE tables are the bucket's own.
                first = build_staged(model, subs[0].latent_shape, req.text_len)
                buckets = [(None, first, subs[0])] + [
                    (n, build_staged(model, sub.latent_shape, req.text_len, like=first), sub)
                    for n, sub in zip(names[1:], subs[1:])]
                finish, compiled = _build_parts(buckets, req, tmp, reporter, gpu)
                # torch.onnx keeps references to the weights: `del` alone frees nothing. The embeds return their
                # RoPE tables (buffers) as outputs, so traced values that are weights are copied first.
                _own_values(finish.values, *(staged for _, staged, _ in buckets))
                release_weights(*(staged for _, staged, _ in buckets), model)
                del buckets, first, model
                release_freed_memory()
            # Each size's entry: the shared build (every part, every size) plus its own validation.
            per_bucket = [[record(e, [cost, validation]) for e, validation in validated] + more
                          for validated, more in zip(finish(), compiled)]
            per_bucket = [[{**e, "stage_key": keys[n, e["patch_size"], e["backend"]]} for e in entries]
                          for n, entries in zip(names, per_bucket)]
        for n, entries in zip(names, per_bucket):
            for e in entries:
                if e["backend"] == "onnx":
                    reporter.done(bucket_label(e["patch_size"], n), e)
        entries = per_bucket[0]
        manifest = manifest_record(req, facts, adapters, weights_sha, old, "staged", entries[0]["io"], entries)
        manifest["buckets"] = bucket_table(list(zip(subs, per_bucket)))
        manifest["staged"] = {"size_index": {str(p): i for i, p in enumerate(req.patch_sizes)},
                              "onnxruntime": ORT_CHOICE, "shared_files": [TRUNK_ONNX],
                              "first_block_split": req.first_block_split}
        write_manifest(tmp, manifest)
    return manifest


def _sample_inputs(staged: StagedModel, patch: int) -> dict:
    """The single engine's sample inputs (same shapes, same seed per size), fp32."""
    probe = PatchSizeEngine(staged.family, staged.transformer, None, patch, staged.latent_shape, staged.text_len)
    return probe.sample_inputs(torch.float32, seed=patch)


def _build_parts(buckets: list[tuple], req: ExportRequest, tmp: Path, reporter, gpu: bool):
    """Trace every bucket's chain, export its graphs (fp32, or the fp32 twin then the cast graphs), compile
    the other artifact kinds. `buckets`: (name, staged model, request) per bucket, the default (name None)
    first; the trunk is exported once, from the default bucket, and validated at every bucket's token counts.
    Returns `finish()`, which validates the ONNX graphs against the traced values (call it once the model is
    gone) and returns per bucket each size's onnx entry with its validation's cost; and per bucket the other
    kinds' entries."""
    half = req.torch_dtype != torch.float32
    split = req.first_block_split
    graphs = tmp / ".twin" if half else tmp
    samples, values, plans = {}, {}, {}
    for name, staged, _ in buckets:
        samples[name] = {p: _sample_inputs(staged, p) for p in staged.sizes}
        values[name] = _traced_values(staged, samples[name], split)
        plans[name] = _part_plan(staged, split)
        for p in staged.sizes:
            BucketReporter(reporter, name).stage(p, "onnx: export parts")
        _export_parts(staged, req, graphs, name, values[name])
    product = values
    if half:
        product = {}
        for name, staged, _ in buckets:
            for p in staged.sizes:
                reporter.stage(bucket_label(p, name), f"onnx: export {req.dtype}")
            cast_staged(staged, req.torch_dtype)
            keep = req.family_obj.float32_inputs
            cast_samples = {p: {k: v if k in keep else v.to(req.torch_dtype) for k, v in inputs.items()}
                            for p, inputs in samples[name].items()}
            # Traced again in the product dtype, so every value between parts has the dtype its producer
            # gives it (RoPE tables stay fp32, as in single engines).
            product[name] = _traced_values(staged, cast_samples, split)
            _export_parts(staged, req, tmp, name, product[name])
    tolerances = dict(HALF_TOLERANCES) if half else dict(atol=req.atol, rtol=req.rtol, min_cosine=req.min_cosine)
    compiled = [[] for _ in buckets]
    if "aoti" in req.artifacts:
        from .aoti import aoti_stage

        with BuildCost(gpu) as cost:
            made = aoti_stage([(n, staged, product[n]) for n, staged, _ in buckets], req, tmp, tolerances, reporter)
        compiled = [done + [record(e, [cost]) for e in more] for done, more in zip(compiled, made)]
    names, subs = [n for n, _, _ in buckets], [sub for _, _, sub in buckets]
    sizes = list(buckets[0][1].sizes)

    def validate_graphs() -> list[list[tuple[dict, BuildCost]]]:
        per_bucket = []
        for name, sub in zip(names, subs):
            bucket_reporter, validated = BucketReporter(reporter, name), []
            for p in sizes:
                with BuildCost(gpu) as cost:
                    validation = _validate(req, sizes, p, graphs, name, samples[name][p], values[name][p],
                                           plans[name][p], bucket_reporter, half)
                    entry = _entry(sub, tmp, name, p, validation)
                validated.append((entry, cost))
            per_bucket.append(validated)
        if half:
            shutil.rmtree(graphs, ignore_errors=True)
        return per_bucket

    if "trt" in req.artifacts:
        # TensorRT builds from the product graphs and validates on the GPU against the torch modules, so it runs
        # with the model here; the ONNX graphs (the plans' source) are validated first, as before.
        from .tensorrt import trt_stage

        validated = validate_graphs()
        with BuildCost(gpu) as cost:
            plans_made = trt_stage([(n, staged, [e for e, _ in v], product[n])
                                    for (n, staged, _), v in zip(buckets, validated)], req, tmp, tolerances, reporter)
        compiled = [done + [record(e, [cost]) for e in more] for done, more in zip(compiled, plans_made)]

        def validated_graphs() -> list[list[tuple[dict, BuildCost]]]:
            return validated

        validated_graphs.values = []  # validated already: nothing traced is needed after this
        return validated_graphs, compiled
    # per bucket, per size: the traced values validation compares against (fp32, and the product dtype's)
    validate_graphs.values = [values[n] for n in names] + ([product[n] for n in names] if half else [])
    return validate_graphs, compiled


def _own_values(value_sets: list, *modules) -> None:
    """Replace every traced value that shares storage with a weight of `modules` by a copy (in place)."""
    weights = {t.untyped_storage().data_ptr() for m in modules for t in [*m.parameters(), *m.buffers()]}
    for per_size in value_sets:
        for values in per_size.values():
            for name, v in values.items():
                if isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() in weights:
                    values[name] = v.clone()


def _part_plan(staged: StagedModel, split: bool) -> dict:
    """size -> part -> (input names, output names): what validation needs to know of the torch parts."""
    parts = ("embed", "trunk", "head", *(SPLIT_PARTS if split else ()))
    return {p: {part: tuple(staged.part_callables(p)[part][1:]) for part in parts} for p in staged.sizes}


def _traced_values(staged: StagedModel, samples: dict, split: bool = False) -> dict:
    """Every named value of the torch chain at each size (the parts' validation inputs); with `split`, also
    block 0's outputs (the inputs of blocks 1..N)."""
    from ...ddit.staged import chain

    out = {}
    with torch.no_grad():
        for p, inputs in samples.items():
            given = {**inputs, "size_index": staged.size_index(p).to(inputs["latent"].device)}
            parts = staged.part_callables(p)
            out[p] = chain(parts, given)
            if split:
                module, names, outputs = parts["first_block"]
                out[p].update(zip(outputs, module(**{n: out[p][n] for n in names})))
    return out


def _part_inputs(staged: StagedModel, patch: int, part: str, values: dict) -> dict:
    _, names, _ = staged.part_callables(patch)[part]
    return {n: values[n] for n in names}


def _export_parts(staged: StagedModel, req: ExportRequest, root: Path, bucket: str | None, values: dict) -> None:
    """The bucket's embeds and heads below `root` (artifacts/layouts.py); the default bucket also writes the
    trunk (and its split halves), which every bucket shares."""
    fp = family_parts(staged.family)
    first = staged.sizes[0]
    # The embeds return their RoPE tables (constants) as outputs by design; the exporter's optimiser logs
    # a warning for every such initializer it cannot deduplicate.
    dedup_log = logging.getLogger("onnx_ir.passes.common.initializer_deduplication")
    level = dedup_log.level
    dedup_log.setLevel(logging.ERROR)
    try:
        _export_graphs(staged, req, root, bucket, values, fp, first)
    finally:
        dedup_log.setLevel(level)


def _export_graphs(staged, req, root: Path, bucket: str | None, values: dict, fp, first: int) -> None:
    with torch.no_grad():
        for p in staged.sizes:
            for part in ("embed", "head"):
                module, _, outputs = staged.part_callables(p)[part]
                export_onnx(module, _part_inputs(staged, p, part, values[p]), outputs,
                            root / in_bucket(onnx_relpath(part, p), bucket), opset=req.opset,
                            external_data=req.external_data)
        if bucket is not None:
            return
        folder = root / STAGED_DIR
        _, _, outputs = staged.part_callables(first)["trunk"]
        export_dynamic_trunk(staged.trunk, _part_inputs(staged, first, "trunk", values[first]), outputs,
                             folder / onnx_name("trunk"), fp.trunk_token_axes(staged.text_len), opset=req.opset,
                             external_data=req.external_data)
        if req.first_block_split:  # the same trunk as two graphs: block 0, then blocks 1..N (first-block caching)
            for part, axes in split_parts(staged, fp).items():
                module, names, outputs = _split_module(staged, first, part)
                export_dynamic_trunk(module, {n: values[first][n] for n in names}, outputs, folder / onnx_name(part),
                                     axes, opset=req.opset, external_data=req.external_data)


SPLIT_PARTS = ("first_block", "other_blocks")


def split_parts(staged, fp) -> dict:
    """part -> its token axes: block 0 reads the trunk's inputs, blocks 1..N block 0's outputs."""
    axes = fp.trunk_token_axes(staged.text_len)
    return {"first_block": axes, "other_blocks": {("head_tokens" if k == "tokens" else k): a for k, a in axes.items()}}


def _split_module(staged, patch: int, part: str):
    from .onnx_export import trunk_half

    _, names, outputs = staged.part_callables(patch)[part]
    return trunk_half(staged.trunk, part, names), names, outputs


def _validate(req, sizes: list[int], p: int, root: Path, bucket: str | None, sample: dict, values: dict, plan: dict,
              reporter, twin: bool) -> dict:
    """Every part of size `p` in `bucket` and its chain (graphs below `root`; the trunk at the bucket's token
    counts) against the traced torch values."""
    reporter.stage(p, "onnx: validate parts and chain")
    tol = dict(atol=req.atol, rtol=req.rtol, min_cosine=req.min_cosine)
    folder, trunk = root / in_bucket(STAGED_DIR, bucket), root / TRUNK_ONNX
    parts = {}
    for part, (names, outputs) in plan.items():
        inputs = {n: values[n] for n in names}
        if part in ("embed", "head"):
            result = validate_onnx_reference(numpy_outputs(values, outputs), inputs, folder / onnx_name(part, p),
                                             **tol)
        else:
            path = trunk if part == "trunk" else root / onnx_relpath(part)
            result = validate_trunk_reference(values, inputs, path, **tol)
        parts[part] = require_valid(result, f"{_where(p, bucket)} {part}").to_json()
    result = require_valid(validate_chain_reference(sizes, p, sample, values["prediction"], folder, trunk=trunk,
                                                    **tol), f"{_where(p, bucket)} chain")
    return {**result.to_json(), "validated_as": "fp32-twin" if twin else "fp32", "parts": parts}


def _where(patch: int, bucket: str | None) -> str:
    return f"patch size {patch}" + (f" at {bucket}" if bucket else "")


def _entry(req: ExportRequest, tmp: Path, bucket: str | None, patch: int, validation: dict) -> dict:
    fam, shape = req.family_obj, req.latent_shape
    files = [in_bucket(onnx_relpath("embed", patch), bucket), TRUNK_ONNX,
             in_bucket(onnx_relpath("head", patch), bucket)]
    if req.first_block_split:  # after the three parts: readers that take files[:3] see the same folder
        files += [onnx_relpath(part) for part in SPLIT_PARTS]
    graphs = list(files)
    files += [f"{f}.data" for f in files if (tmp / f"{f}.data").exists()]
    embed, head = IOSpec.from_onnx(tmp / files[0]), IOSpec.from_onnx(tmp / files[2])
    io = IOSpec(inputs=embed.inputs, outputs=head.outputs).to_json()
    return {
        "patch_size": patch,
        "backend": "onnx",
        "layout": "staged",
        "files": files,
        "sha256": [sha256_file(tmp / f) for f in files],
        "bytes": sum((tmp / f).stat().st_size for f in files),
        "io": io,
        "parts_io": {part: graph_io(tmp / f) for part, f in zip(("embed", "trunk", "head", *SPLIT_PARTS), graphs)},
        "tokens": fam.tokens(shape, patch),
        "padded_grid": list(fam.padded_shape(shape, patch)[-2:]),
        "padding_tokens": round(fam.padding_tokens(shape, patch), 3),
        "validation": validation,
    }
