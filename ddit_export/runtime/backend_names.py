"""The backends by name, as plain data (no torch): the command line lists and checks them while parsing,
`runtime/backends` loads their classes from this table. A new backend is one entry here."""

from __future__ import annotations

# name -> (module of runtime/backends, class).
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


def unknown_backend(name: str) -> str:
    return f"unknown backend '{name}'; available: {', '.join(available_backends())}"
