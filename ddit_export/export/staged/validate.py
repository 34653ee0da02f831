"""Polygraphy validation of the staged layout's trunk (a graph with a symbolic token axis, which
`validate_onnx`'s static I/O spec refuses) and of the whole ONNX Runtime chain of one size."""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

import onnxruntime
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from polygraphy.common import TensorMetadata
from polygraphy.logger import G_LOGGER

from ...artifacts.layouts import onnx_name
from ...runtime.backends.staged.onnxruntime import OnnxStagedChain
from ..validate import ValidationResult, _to_numpy, compare_with_reference, tensor_metadata


def _feed(inputs: dict) -> OrderedDict:
    return OrderedDict((k, v.detach().cpu().numpy()) for k, v in inputs.items())


def validate_trunk_reference(reference: dict, inputs: dict, path: Path, *, atol: float, rtol: float,
                             min_cosine: float) -> ValidationResult:
    """`validate_trunk` against torch's outputs computed before (the traced values): no torch trunk in memory."""
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        session = SessionFromOnnx(str(path), providers=["CPUExecutionProvider"])()
        runner = OnnxrtRunner(session, name="onnxruntime")
        backend = f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider"
        outputs = [o.name for o in session.get_outputs()]
        try:
            return compare_with_reference(runner, numpy_outputs(reference, outputs), inputs, _feed(inputs), backend,
                                          atol=atol, rtol=rtol, min_cosine=min_cosine)
        finally:
            del runner, session


def numpy_outputs(values: dict, names) -> OrderedDict:
    """The named torch values as numpy arrays, in `names`' order (a reference for `compare_with_reference`)."""
    return OrderedDict((n, _to_numpy(values[n])) for n in names)


class StagedChainRunner(BaseRunner):
    """Polygraphy runner for one size's embed -> trunk -> head chain in ONNX Runtime."""

    def __init__(self, chain: OnnxStagedChain, patch: int, metadata: TensorMetadata, output: str = "prediction"):
        super().__init__(name="onnxruntime-chain", prefix="staged-chain")
        self.chain, self.patch, self.metadata, self.output = chain, patch, metadata, output

    def activate_impl(self) -> None: ...

    def deactivate_impl(self) -> None: ...

    def get_input_metadata_impl(self) -> TensorMetadata:
        return self.metadata

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        values = self.chain.run(self.patch, dict(feed_dict))
        self.inference_time = time.perf_counter() - start
        return OrderedDict([(self.output, values[self.output])])


def validate_chain_reference(sizes: list[int], patch: int, inputs: dict, prediction, folder: Path, *, atol: float,
                             rtol: float, min_cosine: float, trunk: Path | None = None) -> ValidationResult:
    """`validate_chain` against the torch chain's prediction computed before: no torch model in memory."""
    trunk_file = str(Path(trunk).resolve()) if trunk else onnx_name("trunk")  # an absolute path joins as itself
    manifest = {"patch_sizes": list(sizes), "engines": [
        {"patch_size": p, "backend": "onnx", "files": [onnx_name("embed", p), trunk_file, onnx_name("head", p)],
         "sha256": []} for p in sizes]}
    chain = OnnxStagedChain(folder, manifest, verify=False)
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        runner = StagedChainRunner(chain, patch, tensor_metadata(inputs))
        backend = f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider (embed -> trunk -> head)"
        try:
            return compare_with_reference(runner, numpy_outputs({"prediction": prediction}, ["prediction"]), inputs,
                                          _feed(inputs), backend, atol=atol, rtol=rtol, min_cosine=min_cosine)
        finally:
            del runner, chain
