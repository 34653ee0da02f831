"""AOTInductor packages of the staged layout, all reading ONE set of weights.

Every part of every size (the trunk once per token count: AOTInductor code is static-shape) is compiled
with `aot_inductor.package_constants_in_so=False`, so no package carries weights. The weights are
written once to `staged/weights.safetensors` (each distinct tensor once; the names every part
knows it by are aliases in the file's metadata) and a loader hands the same tensors to every
package with `load_constants(..., user_managed=True)` (runtime/backends/staged/aoti.py): all sizes
cost one model's weights. Resolution buckets add packages (per bucket its embeds/heads, a trunk per new token
count), never weights: the file holds each distinct tensor once. File names: artifacts/layouts.py.

`aoti_stage` compiles every part of every size, validates each part against its torch module
(Polygraphy, through `validate_callable`) and each size's chain of three packages against the torch
staged model.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch

from ...artifacts.layouts import PARTS, WEIGHTS, in_bucket, package_relpath
from ...artifacts.manifest import sha256_file
from ...ddit.staged import HEAD_OUTPUT, SIZE_INDEX, chain
from ...runtime.backends.staged.aoti import as_kwargs, load_part, load_shared_weights
from ..aoti import AotiError
from ..validate import require_valid, validate_callable


def save_shared_weights(staged, path: Path) -> None:
    """Each distinct tensor of the staged model once; every name it has maps to it (metadata)."""
    from safetensors.torch import save_file

    canonical, aliases = {}, {}
    for name, t in [*staged.named_parameters(remove_duplicate=False), *staged.named_buffers(remove_duplicate=False)]:
        key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        first = canonical.setdefault(key, (name, t))[0]
        aliases[name] = first
    tensors = {name: t.detach().contiguous().cpu() for name, t in canonical.values()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"aliases": json.dumps(aliases)})


def compile_part(module, inputs: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Inductor's autotuning chatter
            program = torch.export.export(module, args=(), kwargs=dict(inputs), strict=False)
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(path), inductor_configs={"aot_inductor.package_constants_in_so": False})
    except Exception as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AotiError(f"AOTInductor could not compile {type(module).__name__}: {cause}") from err


def weights_holder(buckets: list[tuple]) -> torch.nn.Module:
    """What the weights file names: the default bucket's staged model as it is, and each extra bucket's
    embeds/heads below `buckets.<H>x<W>.` (artifacts/layouts.py `part_prefix`; they reuse the default's modules,
    so their names are aliases of the same tensors, but for the RoPE tables)."""
    first = buckets[0][1]
    if len(buckets) == 1:
        return first
    holder = torch.nn.Module()
    holder.embeds, holder.trunk, holder.heads = first.embeds, first.trunk, first.heads
    holder.buckets = torch.nn.ModuleDict({name: torch.nn.ModuleDict({"embeds": staged.embeds, "heads": staged.heads})
                                          for name, staged, _ in buckets[1:]})
    return holder


def aoti_stage(buckets: list[tuple], req, tmp: Path, tolerances: dict, reporter) -> list[list[dict]]:
    """`buckets`: (name, staged model, traced values) per resolution bucket, the default (None) first. Per
    bucket its entries; the trunk is compiled once per token count (two buckets of one count share it)."""
    from ..buckets import BucketReporter

    started = time.perf_counter()
    device = next(buckets[0][1].parameters()).device
    save_shared_weights(weights_holder(buckets), tmp / WEIGHTS)
    weights = load_shared_weights(tmp / WEIGHTS, device)
    trunks: dict[int, str] = {}  # tokens -> the trunk package compiled for that count
    per_bucket = []
    for name, staged, values in buckets:
        report, where = BucketReporter(reporter, name), f" at {name}" if name else ""
        entries = []
        for p in staged.sizes:
            report.stage(p, f"aoti: compile parts ({device.type})")
            tokens = req.family_obj.tokens(staged.latent_shape, p)
            parts, results, runners, files = staged.part_callables(p), {}, {}, []
            for part in PARTS:
                module, names, outputs = parts[part]
                inputs = {n: values[p][n] for n in names}
                rel = trunks.get(tokens) if part == "trunk" else None
                if rel is None:
                    rel = in_bucket(package_relpath(part, p), name)
                    compile_part(module, inputs, tmp / rel)
                    if part == "trunk":
                        trunks[tokens] = rel
                files.append(rel)
                runners[part] = (as_kwargs(load_part(tmp / rel, part, p, weights, device, name)), names, outputs)
                result = validate_callable(module, inputs, runners[part][0], f"aotinductor {torch.__version__}",
                                           output_names=outputs, **tolerances)
                results[part] = require_valid(result, f"patch size {p}{where} {part} (AOTInductor)").to_json()
            names = parts["embed"][1]

            def composed(runners=runners, patch=p, staged=staged, **kw):
                return chain(runners, {**kw, SIZE_INDEX: staged.size_index(patch).to(device)})[HEAD_OUTPUT]

            def reference(patch=p, staged=staged, **kw):
                return staged(patch, kw.pop("latent"), **kw)

            inputs = {n: values[p][n] for n in names}
            result = validate_callable(reference, inputs, composed, f"aotinductor {torch.__version__} (chain)",
                                       **tolerances)
            require_valid(result, f"patch size {p}{where} chain (AOTInductor)")
            files.append(WEIGHTS)
            entries.append({
                "patch_size": p, "backend": "aoti", "layout": "staged", "files": files,
                "sha256": [sha256_file(tmp / f) for f in files], "bytes": sum((tmp / f).stat().st_size for f in files),
                "tokens": tokens, "device": device.type,
                "validation": {**result.to_json(), "validated_as": req.dtype, "parts": results},
                "export_seconds": round(time.perf_counter() - started, 3),
            })
        per_bucket.append(entries)
    return per_bucket
