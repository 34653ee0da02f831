"""Export a module to ONE static-shape ONNX graph with torch's dynamo exporter."""

from __future__ import annotations

import types
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import torch

from ddit_export.artifacts.iospec import IOSpec, TensorSpec

if TYPE_CHECKING:
    import onnx_ir as ir

MIN_OPSET = 20  # RMSNorm and friends only export cleanly with the dynamo exporter at opset >= 20.

# torch's ONNXProgram.save externalizes weights above 1.5 GiB whatever it is told; using the same
# threshold keeps `external_data=None` predictable and leaves headroom under protobuf's 2 GiB cap
# for the graph structure itself.
EXTERNAL_DATA_THRESHOLD_BYTES = 3 * 2**29

# The exporter records each renamed graph value's original name here (torch 2.13).
_ORIGINAL_NAME_KEY = "pkg.torch.onnx.original_node_name"


class ExportError(RuntimeError):
    """The exporter failed, or produced a graph that does not match what was asked for."""


def export_onnx(
    module: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    output_names: list[str],
    path: str | Path,
    *,
    opset: int = 20,
    external_data: bool | None = None,
) -> IOSpec:
    """Export `module(**inputs)` to `path` as a static-shape graph and return its IOSpec.

    Graph inputs are named after the `inputs` keys (same order), outputs after `output_names`.
    `external_data`: True puts all weights in ONE `<name>.onnx.data` file beside the graph;
    None decides by weight size (see EXTERNAL_DATA_THRESHOLD_BYTES).
    """
    _check_opset(opset)
    _check_inputs(inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with linear_weights_pre_transposed(module):
        program = _run_exporter(module, inputs, output_names, opset)
    _verify_graph(program.model, inputs, output_names, opset)
    _save(program, path, _use_external_data(program.model, external_data))
    _check_saved(path)
    return IOSpec.from_onnx(path)


def external_data_path(path: str | Path) -> Path:
    """Where the weights of `path` go when saved as external data."""
    path = Path(path)
    return path.with_name(path.name + ".data")


@contextmanager
def linear_weights_pre_transposed(module: torch.nn.Module):
    """During export, every `nn.Linear` on 3-D or wider inputs multiplies by a transposed *view* of its weight.

    The exporter turns `linear(x, W)` on such inputs into `MatMul(x, Transpose(W))` and its optimiser folds
    the transpose into a NEW initializer: a second copy of nearly every weight of a transformer, resident
    with the model's own until the graph is saved (measured: 2x the weights at FLUX.1-dev widths,
    docs/export-memory.md). Given `W.t()` as a constant, it stores the view instead, and saving writes
    it tensor by tensor. The graph is the same (`MatMul` by the transposed weight, `Add` of the bias);
    2-D inputs keep `linear` (a `Gemm` on the weight itself, whose name readers such as the step cache
    rely on).
    """
    patched = [m for m in module.modules() if type(m) is torch.nn.Linear and not hasattr(m, "weight_t")]
    for linear in patched:
        linear.register_buffer("weight_t", linear.weight.detach().t(), persistent=False)
        linear.forward = types.MethodType(_forward_pre_transposed, linear)
    try:
        yield
    finally:
        for linear in patched:
            del linear.weight_t
            del linear.forward  # the instance attribute: the class's forward again


def _forward_pre_transposed(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 3:
        return torch.nn.functional.linear(x, self.weight, self.bias)
    out = torch.matmul(x, self.weight_t)
    return out if self.bias is None else out + self.bias


def _check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: need opset >= {MIN_OPSET} (dynamo exporter, RMSNorm)")


def _check_inputs(inputs: Mapping[str, object]) -> None:
    if not inputs:
        raise ValueError("export needs at least one input tensor")
    bad = [name for name, value in inputs.items() if not isinstance(value, torch.Tensor)]
    if bad:
        # Non-tensor kwargs get baked in as constants or dropped: make the caller bind them instead.
        raise TypeError(f"inputs must all be tensors; bind non-tensor arguments on the module: {bad}")


def _run_exporter(
    module: torch.nn.Module, inputs: dict[str, torch.Tensor], output_names: list[str], opset: int
) -> torch.onnx.ONNXProgram:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch.export's internal FutureWarnings are about torch itself, not about this module.
            warnings.simplefilter("ignore", FutureWarning)
            # input_names must be passed even though the exporter already uses the kwarg names: without
            # it, an input that is also returned as an output is renamed `<name>_orig`.
            program = torch.onnx.export(
                module,
                args=(),
                kwargs=inputs,
                dynamo=True,
                opset_version=opset,
                input_names=list(inputs),
                output_names=list(output_names),
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"exporting {type(module).__name__} to ONNX failed: {_root_cause(exc)}") from exc
    finally:
        module.train(was_training)
    if program is None:
        raise ExportError(f"exporting {type(module).__name__} returned no ONNXProgram")
    return program


def _root_cause(exc: BaseException) -> str:
    """First line of the innermost cause: torch wraps the real error in generic 'step 1/3' text."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _verify_graph(
    model: ir.Model, inputs: dict[str, torch.Tensor], output_names: list[str], opset: int
) -> None:
    """Fail loudly if the exported graph is not the one the manifest will describe."""
    _verify_inputs(model.graph.inputs, inputs)
    _verify_outputs(model.graph.outputs, output_names)
    got_opset = model.opset_imports.get("")
    if got_opset != opset:
        raise ExportError(f"exporter produced default-domain opset {got_opset}, asked for {opset}")


def _verify_inputs(graph_inputs: Sequence[ir.Value], inputs: dict[str, torch.Tensor]) -> None:
    if len(graph_inputs) != len(inputs):
        # The exporter applies input_names by position, so after a drop the names are shifted:
        # the names it recorded before renaming say which input really went missing.
        kept = {v.metadata_props.get(_ORIGINAL_NAME_KEY, v.name) for v in graph_inputs}
        dropped = [name for name in inputs if name not in kept]
        raise ExportError(
            f"exporter dropped input(s) {dropped or '?'}: graph has {len(graph_inputs)} inputs, "
            f"expected {len(inputs)} {list(inputs)} (unused in forward, or only its shape is used?)"
        )
    for value, (name, tensor) in zip(graph_inputs, inputs.items()):
        want = _tensor_spec(name, tensor)
        got = _ir_value_spec(value)
        if got != want:
            raise ExportError(f"graph input {got} does not match the given input {want}")


def _verify_outputs(graph_outputs: Sequence[ir.Value], output_names: list[str]) -> None:
    got = [v.name for v in graph_outputs]
    if got != list(output_names):
        raise ExportError(f"graph outputs {got} do not match output_names {list(output_names)}")


def _tensor_spec(name: str, tensor: torch.Tensor) -> TensorSpec:
    # str(torch.bfloat16) == "torch.bfloat16": the suffix is already the numpy-style name.
    return TensorSpec(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))


def _ir_value_spec(value: ir.Value) -> TensorSpec:
    dims = tuple(d if isinstance(d, int) else str(d) for d in value.shape)
    return TensorSpec(value.name, dims, value.dtype.numpy().name)


def _weight_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def _use_external_data(model: ir.Model, external_data: bool | None) -> bool:
    if external_data is not None:
        return external_data
    return _weight_bytes(model) >= EXTERNAL_DATA_THRESHOLD_BYTES


def _save(program: torch.onnx.ONNXProgram, path: Path, external: bool) -> None:
    # A data file left by an earlier export of the same path would be stale (or orphaned).
    external_data_path(path).unlink(missing_ok=True)
    try:
        program.save(path, external_data=external)
    except OSError as exc:  # a full or read-only disk is the environment's fault: keep it an OSError
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    except Exception as exc:
        raise ExportError(f"saving ONNX graph to {path} failed: {_root_cause(exc)}") from exc


def _check_saved(path: Path) -> None:
    # By path, not by proto: a loaded > 2 GiB proto cannot be re-serialized for the checker.
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected {path}: {_root_cause(exc)}") from exc
