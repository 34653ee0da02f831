"""Engine runtimes behind one interface (`Backend`), chosen by name with `get_backend`.

Backend modules are imported lazily, so using one never requires another's dependencies.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import torch

from ...artifacts.manifest import BucketError
from ..backend_names import BACKENDS, available_backends, unknown_backend  # available_backends: re-exported
from .base import Backend, BackendError


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise BackendError(unknown_backend(name))
    module, cls = BACKENDS[name]
    return getattr(import_module(f"{__name__}.{module}"), cls)


# name -> (module, class) for folders of the staged layout (embed/head per size, one shared trunk).
STAGED_BACKENDS = {
    "torch": ("torch_eager", "TorchStagedBackend"),
    "torch-compile": ("torch_compile", "TorchCompileStagedBackend"),
    "onnx": ("onnxruntime", "OnnxStagedBackend"),
    "aoti": ("aoti", "AotiStagedBackend"),
    "trt": ("tensorrt", "TensorRTStagedBackend"),
}


def get_backend(name: str, folder: str | Path, device: str | torch.device = "cpu", *,
                bucket: tuple[int, int] | None = None, manifest=None, **options) -> Backend:
    """Load the engines in ``folder`` (a manifest folder) with the backend called ``name``.

    ``bucket``: the (height, width) resolution bucket whose engines to run (None: the folder's default,
    its first); a resolution the folder has no engines for is refused in one line listing its buckets.
    ``loras=[(file, scale), ...]``: run with those user LoRAs (staged folders; docs/loras.md).
    ``manifest``: the folder's `Manifest` when the caller has read it already (a command reads it once).
    """
    loras = options.pop("loras", None)
    backend = _load(name, folder, device, bucket, manifest, **options)
    if loras:
        try:
            backend.set_loras(loras)
        except Exception:
            backend.close()
            raise
    return backend


def _load(name: str, folder, device, bucket, manifest, **options) -> Backend:
    from ...artifacts.manifest import read_manifest

    single = backend_class(name)  # refuses unknown names before touching the folder
    manifest = read_manifest(folder) if manifest is None else manifest
    try:
        manifest = manifest.at_bucket(*(bucket or (None, None)))
    except BucketError as err:
        raise BackendError(f"{folder}: {err}") from None
    if manifest.layout == "staged":
        if name not in STAGED_BACKENDS:
            raise BackendError(f"backend '{name}' does not run staged folders; use one of {', '.join(STAGED_BACKENDS)}")
        module, cls = STAGED_BACKENDS[name]
        return getattr(import_module(f"{__name__}.staged.{module}"), cls)(folder, manifest, device, **options)
    backend = single(folder, manifest, device, **options)
    experts = manifest.get("experts")
    if experts:  # Wan 2.2 A14B: the second expert's engines in a subfolder, one backend for both (experts.py)
        from .experts import ExpertsBackend

        (sub,) = experts["engines"].values()
        low = single.load(Path(folder) / sub, device, **options)
        return ExpertsBackend(backend, low, experts["boundary_timestep"])
    return backend


__all__ = ["BACKENDS", "Backend", "BackendError", "available_backends", "backend_class", "get_backend"]
