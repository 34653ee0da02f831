"""Export a model of two experts (Wan 2.2 A14B): one engine folder, each expert's engines per patch size.

The folder is the first (high-noise) expert's engine folder, with the second expert's engine folder in
`<second>/` (same sizes, geometry and inputs) and the manifest's `experts` record saying when each runs
(diffusers' rule: the first for timesteps >= `boundary_timestep`). Both are built in one temporary folder
that replaces the output in one rename, so an interrupted export leaves the previous output as it was
(and nothing is reused from it: both experts are rebuilt).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..artifacts.manifest import read_manifest, write_manifest
from ..util.atomic import atomic_folder
from .engine_folder import Reporter, previous_manifest
from .request import ExportRequest


def export_experts(req: ExportRequest, reporter: Reporter, experts: dict, export_one) -> dict:
    """``export_one(request, reporter)`` writes one expert's engine folder; see the module docstring."""
    if req.layout != "single":
        raise ValueError(f"{req.model} has two experts (Wan 2.2 A14B): export it with --layout single "
                         "(the staged layout holds one trunk)")
    req.check_out_writable()
    previous_manifest(req)  # an --out that holds something else than engines is refused (unless --force)
    second = experts["second"]
    with atomic_folder(req.out_dir, replace=True) as tmp:  # holds the output's lock
        export_one(replace(req, out=str(tmp)), reporter)  # the high-noise expert, then the low-noise one
        low = export_one(replace(req, model=str(Path(req.model).expanduser() / second), out=str(tmp / second)),
                         reporter)
        manifest = dict(read_manifest(tmp))
        if low["io"] != manifest["io"] or low["patch_sizes"] != manifest["patch_sizes"]:
            raise ValueError(f"the two experts of {req.model} take different inputs or sizes: they cannot share one "
                             "schedule")
        manifest["experts"] = {**experts, "engines": {second: second}}
        write_manifest(tmp, manifest)
    return manifest
