"""Engines with a batch dimension for serving: the same export, from the manifest's own inputs, at batch B.

Engines are static (design: min = opt = max), so a replica that batches requests needs engines
exported at a batch that holds them. `batch_variant("engines/demo", 8)` exports (or reuses, when
unchanged) the folder `engines/demo.batch8` from exactly what `engines/demo/manifest.json` records:
model, adapter pack, geometry, dtype, opset, patch sizes and scheduler defaults, with `batch=8`.
The export flow's lock, reuse and atomic rename apply, so replicas starting together export once.
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts.manifest import read_manifest

EXPORTED_FOR = {"onnx": "onnx", "onnx-trt": "onnx", "torch": "onnx", "torch-compile": "onnx", "aoti": "aoti",
                "trt": "trt"}


def variant_path(folder: Path, batch: int) -> Path:
    return folder.parent / f"{folder.name}.batch{batch}"


def batch_variant(folder: str | Path, batch: int, backend: str = "onnx", reporter=None) -> Path:
    """The folder of `folder`'s engines exported at batch `batch` (built when missing or stale)."""
    from ..export.build import Reporter, export_engines
    from ..export.request import ExportRequest

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.get("layout", "single") != "single":
        raise ValueError(f"{folder} holds staged engines; batched serving exports single-layout engines "
                         "(serve it with --max-batch 1, or export a single layout)")
    if int(manifest["latent_shape"][0]) != 1:
        raise ValueError(f"{folder} was exported at batch {manifest['latent_shape'][0]}; serve a batch-1 folder "
                         "(batched variants are derived from it)")
    scheduler = manifest.get("scheduler", {})
    adapters = manifest.get("adapters", {})
    request = ExportRequest(
        **{**manifest["request"], "batch": batch},
        patch_sizes=tuple(manifest["patch_sizes"]), adapters=adapters.get("path") if adapters.get("sha256") else None,
        opset=int(manifest.get("opset", 20)), out=str(variant_path(folder, batch)),
        artifacts=tuple(sorted({"onnx", EXPORTED_FOR.get(backend, "onnx")})),
        tau=scheduler.get("tau"), rho=scheduler.get("rho"), rule=scheduler.get("rule"),
        scheduler_sizes=tuple(scheduler["patch_sizes"]) if scheduler.get("patch_sizes") else None,
        error_model=scheduler.get("error_model"),  # the predicted-error rule's fit does not depend on the batch
    )
    export_engines(request, reporter or Reporter())
    return variant_path(folder, batch)
