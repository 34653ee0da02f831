"""Engine runtimes behind one interface (`Backend`), chosen by name with `get_backend`.

Backend modules are imported lazily, so using one never requires another's dependencies.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import torch

from .base import Backend, BackendError

# name -> (module, class).
BACKENDS = {
    "torch": ("torch_eager", "TorchEagerBackend"),
    "torch-compile": ("torch_compile", "TorchCompileBackend"),
    "onnx": ("onnxruntime", "OnnxRuntimeBackend"),
    "onnx-trt": ("onnxruntime", "OnnxRuntimeTensorRTBackend"),
    "aoti": ("aoti", "AotiBackend"),
    "trt": ("tensorrt", "TensorRTBackend"),
}


def available_backends() -> list[str]:
    return sorted(BACKENDS)


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend '{name}'; available: {', '.join(available_backends())}")
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


def get_backend(name: str, folder: str | Path, device: str | torch.device = "cpu", **options) -> Backend:
    """Load the engines in ``folder`` (a manifest folder) with the backend called ``name``.

    ``loras=[(file, scale), ...]``: run with those user LoRAs (staged folders; docs/loras.md).
    """
    loras = options.pop("loras", None)
    backend = _load(name, folder, device, **options)
    if loras:
        try:
            backend.set_loras(loras)
        except Exception:
            backend.close()
            raise
    return backend


def _load(name: str, folder, device, **options) -> Backend:
    from ...artifacts.manifest import read_manifest

    single = backend_class(name)  # refuses unknown names before touching the folder
    manifest = read_manifest(folder)
    if manifest.layout == "staged":
        if name not in STAGED_BACKENDS:
            raise BackendError(f"backend '{name}' does not run staged folders; use one of {', '.join(STAGED_BACKENDS)}")
        module, cls = STAGED_BACKENDS[name]
        return getattr(import_module(f"{__name__}.staged.{module}"), cls)(folder, manifest, device, **options)
    return single.load(folder, device, **options)


__all__ = ["BACKENDS", "Backend", "BackendError", "available_backends", "backend_class", "get_backend"]
