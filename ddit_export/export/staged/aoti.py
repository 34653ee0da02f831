"""AOTInductor packages of the staged layout, all reading ONE set of weights.

Every part of every size (the trunk once per size: AOTInductor code is static-shape) is compiled
with `aot_inductor.package_constants_in_so=False`, so no package carries weights. The weights are
written once to `staged/weights.safetensors` (each distinct tensor once; the names every part
knows it by are aliases in the file's metadata) and a loader hands the same tensors to every
package with `load_constants(..., user_managed=True)` (runtime/backends/staged/aoti.py): all sizes
cost one model's weights. File names: artifacts/layouts.py.

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

from ...artifacts.layouts import PARTS, WEIGHTS, package_relpath
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


def aoti_stage(staged, req, tmp: Path, values: dict, tolerances: dict, reporter) -> list[dict]:
    started = time.perf_counter()
    device = next(staged.parameters()).device
    save_shared_weights(staged, tmp / WEIGHTS)
    weights = load_shared_weights(tmp / WEIGHTS, device)
    entries = []
    for p in staged.sizes:
        reporter.stage(p, f"aoti: compile parts ({device.type})")
        parts, results, runners = staged.part_callables(p), {}, {}
        for part in PARTS:
            module, names, outputs = parts[part]
            inputs = {n: values[p][n] for n in names}
            compile_part(module, inputs, tmp / package_relpath(part, p))
            runners[part] = (as_kwargs(load_part(tmp / package_relpath(part, p), part, p, weights, device)),
                             names, outputs)
            result = validate_callable(module, inputs, runners[part][0], f"aotinductor {torch.__version__}",
                                       output_names=outputs, **tolerances)
            results[part] = require_valid(result, f"patch size {p} {part} (AOTInductor)").to_json()
        names = parts["embed"][1]

        def composed(runners=runners, patch=p, **kw):
            return chain(runners, {**kw, SIZE_INDEX: staged.size_index(patch).to(device)})[HEAD_OUTPUT]

        def reference(patch=p, **kw):
            return staged(patch, kw.pop("latent"), **kw)

        inputs = {n: values[p][n] for n in names}
        result = validate_callable(reference, inputs, composed, f"aotinductor {torch.__version__} (chain)",
                                   **tolerances)
        require_valid(result, f"patch size {p} chain (AOTInductor)")
        files = [package_relpath(part, p) for part in PARTS] + [WEIGHTS]
        entries.append({
            "patch_size": p, "backend": "aoti", "layout": "staged", "files": files,
            "sha256": [sha256_file(tmp / f) for f in files], "bytes": sum((tmp / f).stat().st_size for f in files),
            "tokens": req.family_obj.tokens(req.latent_shape, p), "device": device.type,
            "validation": {**result.to_json(), "validated_as": req.dtype, "parts": results},
            "export_seconds": round(time.perf_counter() - started, 3),
        })
    return entries
