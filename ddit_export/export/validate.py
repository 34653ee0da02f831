"""Validate an exported ONNX graph against its PyTorch module, with Polygraphy.

Polygraphy does the running and the comparison (`Comparator.run` + `compare_accuracy`); this
module only adapts a kwargs-taking torch module to Polygraphy's runner interface and condenses
the result into one `ValidationResult` that the CLI and the manifest can record.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, SimpleCompareFunc
from polygraphy.datatype import DataType
from polygraphy.logger import G_LOGGER

from ddit_export.artifacts.iospec import IOSpec


class ValidationError(Exception):
    """An exported graph does not reproduce its PyTorch module."""


@dataclass
class ValidationResult:
    passed: bool
    max_abs_err: float  # max over outputs of the elementwise |onnx - torch|
    max_rel_err: float  # same, relative to the torch output
    cosine: float  # min over outputs, computed in float64
    atol: float
    rtol: float
    backend: str
    min_cosine: float | None = None

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        limits = f"atol {self.atol:.0e}, rtol {self.rtol:.0e}"
        if self.min_cosine is not None:
            limits += f", cos >= {self.min_cosine:g}"
        return (
            f"{verdict}  max|err| {self.max_abs_err:.1e}  rel {self.max_rel_err:.1e}  "
            f"cos {self.cosine:.6f}  ({limits})"
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TorchModuleRunner(BaseRunner):
    """Polygraphy runner for a torch module called as `module(**feed)`.

    Polygraphy's own PytRunner calls `model(*inputs)` positionally, moves inputs with `.cuda()`
    and expects a sequence of outputs; our modules take keyword inputs, may live on CPU, and
    return a tensor, a tuple or a diffusers output mapping.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        example_inputs: Mapping[str, torch.Tensor],
        output_names: Sequence[str],
        name: str | None = None,
    ):
        super().__init__(name=name, prefix="torch-runner")
        self._module = module
        # The examples fix each input's device and dtype (numpy feeds carry neither reliably).
        self._placement = {k: (v.device, v.dtype, tuple(v.shape)) for k, v in example_inputs.items()}
        self.output_names = list(output_names)

    def activate_impl(self) -> None:
        # Any callable works (an AOTInductor package, a compiled function); only modules have a mode.
        self._was_training = getattr(self._module, "training", None)
        if self._was_training is not None:
            self._module.eval()

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for name, (_, dtype, shape) in self._placement.items():
            meta.add(name, dtype=DataType.from_dtype(dtype, "torch"), shape=shape)
        return meta

    def infer_impl(self, feed_dict: Mapping[str, Any]) -> OrderedDict[str, np.ndarray]:
        kwargs = {name: self._to_torch(name, value) for name, value in feed_dict.items()}
        start = time.perf_counter()
        with torch.no_grad():
            outputs = _flatten_outputs(self._module(**kwargs))
        self.inference_time = time.perf_counter() - start
        if len(outputs) != len(self.output_names):
            raise ValueError(f"module returned {len(outputs)} tensors, graph has outputs {self.output_names}")
        return OrderedDict((name, _to_numpy(t)) for name, t in zip(self.output_names, outputs))

    def deactivate_impl(self) -> None:
        if self._was_training is not None:
            self._module.train(self._was_training)

    def _to_torch(self, name: str, value: Any) -> torch.Tensor:
        device, dtype, _ = self._placement[name]
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        return tensor.to(device=device, dtype=dtype)


def _flatten_outputs(out: Any) -> list[torch.Tensor]:
    """Tensors in the same order the exporter flattens them (dicts and diffusers outputs by key)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _flatten_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flatten_outputs(v)]
    return []  # non-tensor leaves (None, numbers) are not graph outputs


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    # numpy has no bfloat16; float32 holds every bf16 value exactly, so nothing is lost.
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    # C-contiguous: Polygraphy's comparison views the arrays, and a head that crops its padding (a bucket whose
    # grid does not divide by the patch size) returns a strided view.
    return tensor.detach().cpu().contiguous().numpy()


def validate_onnx(
    module: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    onnx_path: str | Path,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    min_cosine: float | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    verbose: bool = False,
) -> ValidationResult:
    """Run `module(**inputs)` and the graph at `onnx_path` on the same inputs; compare every output.

    Passes when every element is within atol OR rtol (Polygraphy's elementwise check) and, if
    `min_cosine` is given, every output's cosine similarity to torch is at least that.
    """
    reference = reference_outputs(module, inputs, IOSpec.from_onnx(onnx_path).output_names)
    return validate_onnx_reference(reference, inputs, onnx_path, atol=atol, rtol=rtol, min_cosine=min_cosine,
                                   providers=providers, verbose=verbose)

class ReferenceRunner(BaseRunner):
    """Polygraphy runner that answers with reference outputs computed earlier (`reference_outputs`).

    The export computes torch's outputs while the model is in memory and drops the model before it
    opens the runtime under test, so the two copies of the weights are never resident at once
    (docs/export-memory.md). Comparing against the stored outputs is the same comparison: torch's
    outputs on the same feed.
    """

    def __init__(self, outputs: Mapping[str, np.ndarray], metadata: TensorMetadata, name: str = "torch"):
        super().__init__(name=name, prefix="reference-runner")
        self._outputs, self._metadata = OrderedDict(outputs), metadata
        self.output_names = list(outputs)

    def activate_impl(self) -> None: ...

    def deactivate_impl(self) -> None: ...

    def get_input_metadata_impl(self) -> TensorMetadata:
        return self._metadata

    def infer_impl(self, feed_dict: Mapping[str, Any]) -> OrderedDict[str, np.ndarray]:
        self.inference_time = 0.0
        return OrderedDict(self._outputs)


def reference_outputs(module, inputs: Mapping[str, torch.Tensor], output_names: Sequence[str]) -> OrderedDict:
    """`module(**inputs)` as numpy arrays named `output_names`: what `compare_with_reference` checks against."""
    with torch.no_grad():
        outputs = _flatten_outputs(module(**inputs))
    if len(outputs) != len(output_names):
        raise ValueError(f"module returned {len(outputs)} tensors, expected outputs {list(output_names)}")
    return OrderedDict((name, _to_numpy(t)) for name, t in zip(output_names, outputs))


def tensor_metadata(inputs: Mapping[str, torch.Tensor]) -> TensorMetadata:
    """Polygraphy's description of torch inputs (names, dtypes, shapes)."""
    meta = TensorMetadata()
    for name, t in inputs.items():
        meta.add(name, dtype=DataType.from_dtype(t.dtype, "torch"), shape=tuple(t.shape))
    return meta


def compare_with_reference(
    candidate: BaseRunner,
    reference: Mapping[str, np.ndarray],
    inputs: Mapping[str, torch.Tensor],
    feed: Mapping[str, Any],
    backend: str,
    *,
    atol: float,
    rtol: float,
    min_cosine: float | None,
) -> ValidationResult:
    """Compare any Polygraphy runner with stored torch outputs (`reference_outputs`) on one feed."""
    runner = ReferenceRunner(reference, tensor_metadata(inputs))
    return _compare(candidate, runner, feed, list(reference), backend, atol=atol, rtol=rtol, min_cosine=min_cosine)


def validate_onnx_reference(
    reference: Mapping[str, np.ndarray],
    inputs: dict[str, torch.Tensor],
    onnx_path: str | Path,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    min_cosine: float | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    verbose: bool = False,
) -> ValidationResult:
    """`validate_onnx` against outputs computed earlier: no torch module needs to be in memory."""
    spec = IOSpec.from_onnx(onnx_path)
    feed = _numpy_feed(inputs, spec)
    if list(reference) != spec.output_names:
        raise ValueError(f"reference outputs {list(reference)} do not match the graph outputs {spec.output_names}")
    with G_LOGGER.verbosity(G_LOGGER.INFO if verbose else G_LOGGER.ERROR):
        session = SessionFromOnnx(str(onnx_path), providers=list(providers))()
        backend = f"onnxruntime {onnxruntime.__version__} {session.get_providers()[0]}"
        candidate = OnnxrtRunner(session, name="onnxruntime")
        try:
            return compare_with_reference(candidate, reference, inputs, feed, backend,
                                          atol=atol, rtol=rtol, min_cosine=min_cosine)
        finally:
            del candidate, session  # the session holds the graph's weights: gone before the next one opens


def compare_with_torch(
    candidate: BaseRunner,
    module,
    inputs: Mapping[str, torch.Tensor],
    feed: Mapping[str, Any],
    output_names: Sequence[str],
    backend: str,
    *,
    atol: float,
    rtol: float,
    min_cosine: float | None,
) -> ValidationResult:
    """Compare any Polygraphy runner with the torch reference `module(**inputs)` on one feed."""
    # Candidate first, torch second: Polygraphy's relative error divides by the second runner's
    # output, which should be the reference.
    torch_runner = TorchModuleRunner(module, inputs, output_names, name="torch")
    return _compare(candidate, torch_runner, feed, output_names, backend, atol=atol, rtol=rtol, min_cosine=min_cosine)


def _compare(candidate: BaseRunner, torch_runner: BaseRunner, feed, output_names, backend: str, *, atol: float,
             rtol: float, min_cosine: float | None) -> ValidationResult:
    run_results = Comparator.run([candidate, torch_runner], data_loader=[feed])
    compare = SimpleCompareFunc(atol=atol, rtol=rtol)  # elementwise: |err| <= atol OR rel <= rtol
    accuracy = Comparator.compare_accuracy(run_results, compare_func=compare)
    max_abs, max_rel = _max_errors(accuracy)
    cosine = _min_cosine(run_results, candidate.name, torch_runner.name, output_names)
    passed = bool(accuracy) and (min_cosine is None or cosine >= min_cosine)
    return ValidationResult(passed, max_abs, max_rel, cosine, atol, rtol, backend, min_cosine)


def validate_callable(
    module, inputs: dict[str, torch.Tensor], candidate, backend: str, *, output_names=("prediction",),
    atol: float = 1e-4, rtol: float = 1e-4, min_cosine: float | None = None,
) -> ValidationResult:
    """Validate an in-process compiled callable (AOTInductor, torch.compile) against eager torch."""
    feed = OrderedDict((k, v) for k, v in inputs.items())
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        runner = TorchModuleRunner(candidate, inputs, output_names, name=backend.split()[0])
        return compare_with_torch(runner, module, inputs, feed, output_names, backend,
                                  atol=atol, rtol=rtol, min_cosine=min_cosine)


def require_valid(result: ValidationResult, what: str) -> ValidationResult:
    """Raise ValidationError (with the measured error) unless `result` passed."""
    if not result.passed:
        raise ValidationError(f"{what}: {result.backend} does not match PyTorch: {result.summary()}")
    return result


def _numpy_feed(inputs: Mapping[str, torch.Tensor], spec: IOSpec) -> OrderedDict[str, np.ndarray]:
    if list(inputs) != spec.input_names:
        raise ValueError(f"inputs {list(inputs)} do not match the graph inputs {spec.input_names}")
    bf16 = [name for name, t in inputs.items() if t.dtype == torch.bfloat16]
    if bf16:
        # ONNX Runtime's Python API cannot take bfloat16 numpy arrays (ml_dtypes or otherwise).
        raise ValueError(f"bfloat16 inputs {bf16} cannot be fed to ONNX Runtime: validate the fp32 twin")
    return OrderedDict((name, t.detach().cpu().numpy()) for name, t in inputs.items())


def _max_errors(accuracy) -> tuple[float, float]:
    """Max abs/rel error over all outputs, read from Polygraphy's per-output compare results."""
    compared = [
        out
        for result in accuracy  # one AccuracyResult per compare function
        for iterations in result.values()  # per runner pair
        for iteration in iterations
        for out in iteration.values()
    ]
    if not compared:
        raise ValidationError("Polygraphy compared no outputs (no output names in common)")
    return max(o.max_absdiff for o in compared), max(o.max_reldiff for o in compared)


def _min_cosine(run_results, onnx_name: str, torch_name: str, output_names: Sequence[str]) -> float:
    onnx_out, torch_out = run_results[onnx_name][0], run_results[torch_name][0]
    return min(_cosine(_as_numpy(onnx_out[n]), _as_numpy(torch_out[n])) for n in output_names)


def _as_numpy(value) -> np.ndarray:
    # TensorRT's runner returns torch (possibly bf16, on CUDA) when fed torch tensors.
    return _to_numpy(value) if isinstance(value, torch.Tensor) else np.asarray(value)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    if norm == 0.0:
        # Two all-zero outputs agree perfectly; one all-zero output does not.
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.dot(a, b) / norm)


def validate_callable_reference(reference: Mapping[str, np.ndarray], inputs: dict[str, torch.Tensor], candidate,
                                backend: str, *, atol: float = 1e-4, rtol: float = 1e-4,
                                min_cosine: float | None = None) -> ValidationResult:
    """`validate_callable` against outputs computed earlier (`reference_outputs`)."""
    feed = OrderedDict((k, v) for k, v in inputs.items())
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        runner = TorchModuleRunner(candidate, inputs, list(reference), name=backend.split()[0])
        return compare_with_reference(runner, reference, inputs, feed, backend, atol=atol, rtol=rtol,
                                      min_cosine=min_cosine)
