"""ONNX graphs of the staged layout's parts.

Embeds and heads are static graphs like single engines (`export_onnx`). The trunk is ONE graph for
every size with a symbolic token axis: ONNX Runtime then holds its weights once in one session
(the alternative, one static trunk graph per size with weights shared across sessions, measured
slower and larger on the CPU: docs/staged.md, tools/staged_ort_trunk.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from ..onnx_export import (
    ExportError,
    _check_saved,
    _root_cause,
    _save,
    _use_external_data,
    linear_weights_pre_transposed,
)

TOKEN_AXIS = "tokens"


def export_dynamic_trunk(trunk, inputs: dict, output_names: list[str], path: Path, token_axes: dict, *,
                         opset: int, external_data: bool | None) -> None:
    """Export `trunk(**inputs)` with the token axis symbolic (`token_axes`: name -> {axis: extra length})."""
    from torch.export import Dim

    tokens = Dim(TOKEN_AXIS, min=1, max=1 << 20)
    dynamic = {name: None for name in inputs}
    for name, axes in token_axes.items():
        dynamic[name] = {axis: tokens + extra if extra else tokens for axis, extra in axes.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad(), warnings.catch_warnings(), linear_weights_pre_transposed(trunk):
            warnings.simplefilter("ignore")  # torch.export's FutureWarnings are about torch itself
            program = torch.onnx.export(
                trunk, args=(), kwargs=inputs, dynamo=True, opset_version=opset, input_names=list(inputs),
                output_names=list(output_names), dynamic_shapes=dynamic, verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"exporting the trunk to ONNX failed: {_root_cause(exc)}") from exc
    got = [v.name for v in program.model.graph.inputs]
    if got != list(inputs):
        raise ExportError(f"trunk graph inputs {got} are not {list(inputs)}")
    _save(program, path, _use_external_data(program.model, external_data))
    _check_saved(path)


def trunk_half(trunk, method: str, names) -> torch.nn.Module:
    """`trunk.first_block` / `trunk.other_blocks` as a module whose forward takes exactly `names` (the exporter
    maps keyword inputs to a forward's parameters by name)."""
    args = ", ".join(names)
    namespace: dict = {}
    exec(f"def forward(self, {args}):\n    return self.trunk.{method}({args})", namespace)
    module = type(f"Trunk_{method}", (torch.nn.Module,), {"forward": namespace["forward"]})()
    module.trunk = trunk
    return module


def graph_io(path: Path) -> dict:
    """Inputs and outputs of a graph as the manifest records them; a symbolic axis is written by name."""
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}

    def spec(v):
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return {"inputs": [spec(v) for v in graph.input if v.name not in inits], "outputs": [spec(v) for v in graph.output]}
