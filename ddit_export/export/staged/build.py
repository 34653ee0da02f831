"""Export flow of the staged layout: per size an embed and a head graph, ONE trunk graph for all sizes.

Same guarantees as the single layout (build.py): every part and the whole chain of every size is
validated against PyTorch through Polygraphy with the same tolerances, every file is hashed into
the manifest, the folder is written atomically, and an unchanged build is reused. The trunk holds
the stacked adapters of every size, so a change of any size rebuilds all parts (reuse is all or
nothing). The manifest lists one entry per size (`files`: embed, trunk, head), so tools that read
per-size entries (inspect, bench) keep working; `layout: staged` routes backends to the chain.

Memory (docs/export-memory.md): the torch chain is traced once per size (its named values are the
reference outputs of every part), the graphs are written, and the model is dropped before ONNX
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
from ...artifacts.layouts import STAGED_DIR, TRUNK_ONNX, onnx_name, onnx_relpath
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
from ..build_cost import BuildCost, record
from ..engine_folder import (
    Reporter,
    load_for_export,
    manifest_record,
    previous_manifest,
    reuse,
    stage_key,
    stage_key_base,
)
from ..onnx_export import export_onnx
from ..request import ExportRequest
from ..resources import check_resources
from ..stages import HALF_TOLERANCES
from ..validate import require_valid, validate_onnx_reference
from .onnx_export import export_dynamic_trunk, graph_io
from .validate import numpy_outputs, validate_chain_reference, validate_trunk_reference

# Measured on ONNX Runtime CPU (docs/staged.md): one dynamic-token trunk session beats per-size static
# graphs sharing weights in memory and speed. The trunk is one session, so pre-packing copies nothing
# twice; it is kept on (as in single engines) for speed. Embeds/heads share weights, so theirs is off.
ORT_CHOICE = {"trunk": "dynamic-token-axis", "prepacking": True, "measured_in": "docs/staged.md"}


def export_staged(req: ExportRequest, reporter: Reporter | None = None) -> dict:
    reporter = reporter or Reporter()
    req.check_out_writable()
    with output_lock(req.out_dir, on_wait=reporter.warn):  # one writer per --out, as for single engines
        return _export_staged_locked(req, reporter)


def _export_staged_locked(req: ExportRequest, reporter: Reporter) -> dict:
    old = previous_manifest(req)
    check_resources(req, reporter)
    req, model, adapters = load_for_export(req, reporter)
    model.to(req.device)
    weights_sha = sha256_tensors(base_state_dict(model.transformer))
    key_base = {**stage_key_base(req, weights_sha, adapters), "layout": "staged", "sizes": list(req.patch_sizes)}
    keys = {(p, b): stage_key(key_base, p, b) for p in req.patch_sizes for b in req.backends}
    facts = SimpleNamespace(config=dict(model.config), base_patch=model.base_patch)  # what the manifest needs
    reporter.begin(list(req.patch_sizes))
    with atomic_folder(req.out_dir, replace=True) as tmp:
        entries = [reuse(old, req.out_dir, key, tmp) for key in keys.values()] if old else []
        if not entries or any(e is None for e in entries):
            shutil.rmtree(tmp / STAGED_DIR, ignore_errors=True)
            gpu = req.device.startswith("cuda") or "trt" in req.backends
            with BuildCost(gpu) as cost:
                staged = build_staged(model, req.latent_shape, req.text_len)
                finish, compiled = _build_parts(staged, req, tmp, reporter, gpu)
                # torch.onnx keeps references to the weights: `del` alone frees nothing. The embeds return their
                # RoPE tables (buffers) as outputs, so traced values that are weights are copied first.
                _own_values(finish.values, staged)
                release_weights(staged, model)
                del staged, model
                release_freed_memory()
            # Each size's entry: the shared build (every part, every size) plus its own validation.
            entries = [record(e, [cost, validation]) for e, validation in finish()] + compiled
        else:
            del model
        entries = [{**e, "stage_key": keys[e["patch_size"], e["backend"]]} for e in entries]
        for e in entries:
            if e["backend"] == "onnx":
                reporter.done(e["patch_size"], e)
        manifest = manifest_record(req, facts, adapters, weights_sha, old, "staged", entries[0]["io"], entries)
        manifest["staged"] = {"size_index": {str(p): i for i, p in enumerate(req.patch_sizes)},
                              "onnxruntime": ORT_CHOICE, "shared_files": [TRUNK_ONNX],
                              "first_block_split": req.first_block_split}
        write_manifest(tmp, manifest)
    return manifest


def _sample_inputs(staged: StagedModel, patch: int) -> dict:
    """The single engine's sample inputs (same shapes, same seed per size), fp32."""
    probe = PatchSizeEngine(staged.family, staged.transformer, None, patch, staged.latent_shape, staged.text_len)
    return probe.sample_inputs(torch.float32, seed=patch)


def _build_parts(staged: StagedModel, req: ExportRequest, tmp: Path, reporter, gpu: bool):
    """Trace, export (fp32, or the fp32 twin then the cast graphs), compile the other artifact kinds. Returns
    `finish()`, which validates the ONNX graphs against the traced values (call it once the model is gone)
    and returns each size's onnx entry with its validation's cost, and the other kinds' entries."""
    half = req.torch_dtype != torch.float32
    graphs = tmp / (".twin" if half else STAGED_DIR)
    samples = {p: _sample_inputs(staged, p) for p in staged.sizes}
    values = _traced_values(staged, samples, req.first_block_split)
    plan = _part_plan(staged, req.first_block_split)
    for p in staged.sizes:
        reporter.stage(p, "onnx: export parts")
    _export_parts(staged, req, graphs, values)
    product = values
    if half:
        for p in staged.sizes:
            reporter.stage(p, f"onnx: export {req.dtype}")
        cast_staged(staged, req.torch_dtype)
        keep = req.family_obj.float32_inputs
        cast_samples = {p: {k: v if k in keep else v.to(req.torch_dtype) for k, v in inputs.items()}
                        for p, inputs in samples.items()}
        # Traced again in the product dtype, so every value between parts has the dtype its producer
        # gives it (RoPE tables stay fp32, as in single engines).
        product = _traced_values(staged, cast_samples, req.first_block_split)
        _export_parts(staged, req, tmp / STAGED_DIR, product)
    tolerances = dict(HALF_TOLERANCES) if half else dict(atol=req.atol, rtol=req.rtol, min_cosine=req.min_cosine)
    compiled = []
    if "aoti" in req.backends:
        from .aoti import aoti_stage

        with BuildCost(gpu) as cost:
            made = aoti_stage(staged, req, tmp, product, tolerances, reporter)
        compiled += [record(e, [cost]) for e in made]
    sizes = list(staged.sizes)

    def validate_graphs() -> list[tuple[dict, BuildCost]]:
        validated = []
        for p in sizes:
            with BuildCost(gpu) as cost:
                validation = _validate(req, sizes, p, graphs, samples[p], values[p], plan[p], reporter)
                if p == sizes[-1] and half:
                    shutil.rmtree(graphs, ignore_errors=True)
                entry = _entry(req, tmp, p, validation)
            validated.append((entry, cost))
        return validated

    if "trt" in req.backends:
        # TensorRT builds from the product graphs and validates on the GPU against the torch modules, so it runs
        # with the model here; the ONNX graphs (the plans' source) are validated first, as before.
        from .tensorrt import trt_stage

        validated = validate_graphs()
        with BuildCost(gpu) as cost:
            made = trt_stage(staged, req, tmp, [e for e, _ in validated], product, tolerances, reporter)
        compiled += [record(e, [cost]) for e in made]

        def validated_graphs() -> list[tuple[dict, BuildCost]]:
            return validated

        validated_graphs.values = []  # validated already: nothing traced is needed after this
        return validated_graphs, compiled
    validate_graphs.values = [values, product]
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


def _export_parts(staged: StagedModel, req: ExportRequest, folder: Path, values: dict) -> None:
    fp = family_parts(staged.family)
    first = staged.sizes[0]
    # The embeds return their RoPE tables (constants) as outputs by design; the exporter's optimiser logs
    # a warning for every such initializer it cannot deduplicate.
    dedup_log = logging.getLogger("onnx_ir.passes.common.initializer_deduplication")
    level = dedup_log.level
    dedup_log.setLevel(logging.ERROR)
    try:
        _export_graphs(staged, req, folder, values, fp, first)
    finally:
        dedup_log.setLevel(level)


def _export_graphs(staged, req, folder: Path, values: dict, fp, first: int) -> None:
    with torch.no_grad():
        for p in staged.sizes:
            for part in ("embed", "head"):
                module, _, outputs = staged.part_callables(p)[part]
                export_onnx(module, _part_inputs(staged, p, part, values[p]), outputs, folder / onnx_name(part, p),
                            opset=req.opset, external_data=req.external_data)
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


def _validate(req, sizes: list[int], p: int, folder: Path, sample: dict, values: dict, plan: dict, reporter) -> dict:
    """Every part of size `p` and its chain (graphs in `folder`) against the traced torch values."""
    reporter.stage(p, "onnx: validate parts and chain")
    tol = dict(atol=req.atol, rtol=req.rtol, min_cosine=req.min_cosine)
    parts = {}
    for part, (names, outputs) in plan.items():
        inputs = {n: values[n] for n in names}
        path = folder / (onnx_name(part, p) if part in ("embed", "head") else onnx_name(part))
        if part in ("embed", "head"):
            result = validate_onnx_reference(numpy_outputs(values, outputs), inputs, path, **tol)
        else:
            result = validate_trunk_reference(values, inputs, path, **tol)
        parts[part] = require_valid(result, f"patch size {p} {part}").to_json()
    result = require_valid(validate_chain_reference(sizes, p, sample, values["prediction"], folder, **tol),
                           f"patch size {p} chain")
    return {**result.to_json(), "validated_as": "fp32-twin" if folder.name == ".twin" else "fp32", "parts": parts}


def _entry(req: ExportRequest, tmp: Path, patch: int, validation: dict) -> dict:
    fam, shape = req.family_obj, req.latent_shape
    files = [onnx_relpath("embed", patch), TRUNK_ONNX, onnx_relpath("head", patch)]
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
