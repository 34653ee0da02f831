"""Static input/output description of one exported graph.

An `IOSpec` is what a manifest records about a graph, so that anyone can build a feed and run
the engine from the manifest alone: no torch, no module, no sample inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

# Torch-free on purpose: the runtime side loads specs without importing torch.


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, fully static shape, numpy-style dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "float32", "float16", "bfloat16", "int64", "bool", ...

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        shape = tuple(int(d) for d in data["shape"])
        return cls(name=str(data["name"]), shape=shape, dtype=str(data["dtype"]))


@dataclass(frozen=True)
class IOSpec:
    """Ordered graph inputs and outputs."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IOSpec:
        return cls(
            inputs=[TensorSpec.from_json(t) for t in data["inputs"]],
            outputs=[TensorSpec.from_json(t) for t in data["outputs"]],
        )

    @classmethod
    def from_onnx(cls, path: str | Path) -> IOSpec:
        """Read the declared graph inputs/outputs; never loads external weights (cheap for 20 GB models)."""
        graph = onnx.load(str(path), load_external_data=False).graph
        initializer_names = {init.name for init in graph.initializer}
        # Older exporters listed initializers as graph inputs too; those are not feedable inputs.
        inputs = [_value_info_spec(v) for v in graph.input if v.name not in initializer_names]
        return cls(inputs=inputs, outputs=[_value_info_spec(v) for v in graph.output])


def _value_info_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value.type.tensor_type
    dims = []
    for axis, dim in enumerate(tensor_type.shape.dim):
        # Every graph in this project is static; a symbolic axis means the export went wrong.
        if not dim.HasField("dim_value"):
            label = dim.dim_param or "unknown"
            raise ValueError(f"graph tensor {value.name!r} has a non-static axis {axis} ({label!r})")
        dims.append(int(dim.dim_value))
    return TensorSpec(name=value.name, shape=tuple(dims), dtype=onnx_dtype_name(tensor_type.elem_type))


def onnx_dtype_name(elem_type: int) -> str:
    """ONNX TensorProto element type -> numpy-style name ("bfloat16" via ml_dtypes)."""
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name


def numpy_dtype(name: str) -> np.dtype:
    """numpy-style dtype name -> numpy dtype; bfloat16 (not a numpy type) comes from ml_dtypes."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def random_feed(spec: IOSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs for every graph input, in graph order."""
    rng = np.random.default_rng(seed)
    return {t.name: _random_array(t, rng) for t in spec.inputs}


def _random_array(tensor: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    dtype = numpy_dtype(tensor.dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=tensor.shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        # Small non-negative values: integer inputs are ids/indices, which must stay in range.
        return rng.integers(0, 8, size=tensor.shape).astype(dtype)
    # Floats (bfloat16 included): unit normal, like latents and embeddings.
    return rng.standard_normal(size=tensor.shape, dtype=np.float32).astype(dtype)
