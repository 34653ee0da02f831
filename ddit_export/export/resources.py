"""Before the heavy work: will this export fit in the host's free memory and the output's free disk?

The estimate follows what the build holds (docs/export-memory.md, measured on the `smoke` preset):
the model is loaded in fp32 and held once (each size is merged into it in place); a half-precision
export also holds the cast engine; validation runs after the model is dropped, with one runtime copy
of one artifact's weights at a time. The tools themselves (torch, the ONNX exporter, ONNX Runtime)
add a fixed amount. When the free memory or disk is clearly below the estimate, the export stops
with one line that gives the estimate and what lowers it, instead of being killed halfway.
`--skip-resource-check` (`ExportRequest.skip_resource_check`) tries anyway; the environment variables
of util/memory.py fake a low limit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..artifacts.dtypes import DTYPES
from ..families.base import PACKAGED_MODELS
from ..util.memory import DISK_ENV, MEMORY_ENV, available_disk, available_memory, gib
from .request import ExportRequest

TOOLS_BYTES = 3 * 2**29  # torch, exporter, ONNX Runtime: 1.5 GiB (0.95-1.1 GiB measured after imports)
# peak / the fp32 weights beyond the tools: measured 1.01-1.05 on smoke over 4 runs (docs/export-memory.md);
# 1.4 leaves a margin for models and dtypes not measured
HELD_FACTOR = 1.4


class ResourceError(ValueError):
    """The host's free memory or disk is clearly below what the export needs."""


def parameter_count(req: ExportRequest) -> int | None:
    """The model's parameter count from its config alone (meta device, no weights read); None when unknown."""
    fam = req.family_obj
    try:
        config = _config(fam, req.model)
        if config is None:
            return None
        with torch.device("meta"):
            model = fam.model_class().from_config(config)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # an unreadable config is the loader's to report, with its own words
        return None


def _config(fam, model: str) -> dict | None:
    if model in fam.presets:
        return dict(fam.presets[model])
    path = Path(model).expanduser()
    for folder in (PACKAGED_MODELS / model / "transformer", path / "transformer", path):
        if (folder / "config.json").is_file():
            return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config, _ = fam.model_class().load_config(model, subfolder="transformer", local_files_only=True,
                                              return_unused_kwargs=True)
    return config


def memory_estimate(req: ExportRequest, params: int) -> int:
    fp32 = params * 4
    half = params * DTYPES[req.dtype].itemsize if req.dtype != "fp32" else 0
    return int(fp32 * HELD_FACTOR + half + TOOLS_BYTES)


def disk_estimate(req: ExportRequest, params: int, layout: str | None = None) -> int:
    """Artifacts, plus what lives beside them until the build ends (fp32 twins of half graphs, the merge spill)."""
    product = params * DTYPES[req.dtype].itemsize
    copies = 1 if (layout or req.layout) == "staged" else len(req.patch_sizes)
    kinds = len(req.artifacts)  # each artifact kind holds the weights once per copy
    twins = copies * params * 4 if req.dtype != "fp32" else 0
    spill = params * 4 // 2 if (layout or req.layout) == "single" and len(req.patch_sizes) > 1 else 0
    return product * copies * kinds + twins + spill


def check_resources(req: ExportRequest, reporter=None) -> None:
    """Raise ResourceError (one line) when memory or disk is clearly below the estimate."""
    if req.skip_resource_check:
        return
    params = parameter_count(req)
    if params is None:
        return
    need, have = memory_estimate(req, params), available_memory()
    override = "--skip-resource-check to try anyway"
    if have < need:
        lower = ""
        if "aoti" in req.artifacts:
            lower = " or export ONNX first (--artifacts onnx) and compile AOTInductor on its own,"
        raise ResourceError(
            f"not enough free memory for this export: it needs about {gib(need)} (the model's {params / 1e9:.2f} B "
            f"parameters held once in fp32{' plus the ' + req.dtype + ' engine' if req.dtype != 'fp32' else ''}, "
            f"and the tools), {gib(have)} is available{f' (${MEMORY_ENV})' if _env(MEMORY_ENV) else ''}; free "
            f"memory{lower} or pass {override}")
    out = req.out_dir
    if (out / "manifest.json").exists():
        return  # a rebuild hard-links what it reuses: the disk need is not the whole folder's
    need, have = disk_estimate(req, params), available_disk(out.absolute().parent)
    if have < need:
        hints = []
        if req.layout == "single" and len(req.patch_sizes) > 1:
            hints.append(f"--layout staged stores the weights once ({gib(disk_estimate(req, params, 'staged'))})")
        if len(req.artifacts) > 1:
            hints.append("fewer --artifacts")
        lower = f"; {' or '.join(hints)}" if hints else ""
        raise ResourceError(
            f"not enough free disk beside {out} for this export: it writes about {gib(need)} "
            f"({len(req.patch_sizes)} size(s), {', '.join(req.artifacts)}, {req.dtype}), {gib(have)} is free"
            f"{f' (${DISK_ENV})' if _env(DISK_ENV) else ''}{lower}; or pass {override}")


def _env(name: str) -> bool:
    import os

    return bool(os.environ.get(name))
