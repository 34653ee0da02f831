"""The AOTInductor stage of the staged layout: packages without weights, one weights file, validated.

Each part of each size is validated against its torch module (Polygraphy, through
`validate_callable`) and each size's chain of the three packages against the torch staged model.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..artifacts.layouts import PARTS, WEIGHTS, package_relpath
from ..artifacts.manifest import sha256_file
from ..ddit.staged import HEAD_OUTPUT, SIZE_INDEX, chain
from ..runtime.backends.staged_aoti import as_kwargs, load_part, load_shared_weights
from .staged_aoti import compile_part, save_shared_weights
from .validate import require_valid, validate_callable


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
