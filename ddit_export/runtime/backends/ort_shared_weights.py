"""ONNX Runtime sessions that hold each weight once, however many graphs carry it.

The staged layout's per-size graphs repeat size-independent weights (FLUX's time/text embeddings
and output norm in every embed and head; every block weight in per-size static trunk graphs). ORT
shares a weight across sessions when it is handed in as one `OrtValue` through
`SessionOptions.add_initializer`; weights are matched by content (dtype, shape, bytes), since the
exporter's names for derived constants differ between graphs. CPU pre-packing would copy a shared
weight again per session, so sessions that share are made with `session.disable_prepacking`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def ortvalue(array: np.ndarray):
    """An OrtValue borrowing `array`'s memory; bfloat16 (ml_dtypes, which `ortvalue_from_numpy` refuses) as its bits."""
    from onnxruntime import OrtValue

    if array.dtype.name == "bfloat16":
        return OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16), onnx.TensorProto.BFLOAT16)
    return OrtValue.ortvalue_from_numpy(array)


def _content_key(array: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).tobytes())
    return f"{array.dtype}:{array.shape}:{digest.hexdigest()}"


def _initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path), load_external_data=True)
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


class SharedWeights:
    """Weights that occur in two or more of `paths`, each as ONE OrtValue, handed to every session."""

    def __init__(self, paths: list[Path], min_bytes: int = 1024):
        per_graph = {Path(p): _initializers(Path(p)) for p in paths}
        owners: dict[str, set[Path]] = {}
        arrays: dict[str, np.ndarray] = {}
        names: dict[Path, dict[str, str]] = {}
        for path, inits in per_graph.items():
            names[path] = {}
            for name, array in inits.items():
                if array.nbytes < min_bytes:  # scalars and shape constants: not worth a shared value
                    continue
                key = _content_key(array)
                owners.setdefault(key, set()).add(path)
                arrays.setdefault(key, array)
                names[path][name] = key
        shared = {k for k, o in owners.items() if len(o) > 1}
        # The arrays must outlive the sessions: OrtValues made from numpy borrow their memory.
        self._arrays = {k: np.ascontiguousarray(arrays[k]) for k in shared}
        self._values = {k: ortvalue(a) for k, a in self._arrays.items()}
        self._names = {p: {n: k for n, k in m.items() if k in shared} for p, m in names.items()}
        uses = [k for m in self._names.values() for k in m.values()]
        # What the graphs' own copies would have cost beyond one each (what sharing saves).
        self.duplicate_bytes = sum(self._arrays[k].nbytes for k in uses) - self.bytes

    @property
    def bytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())

    def shared_in(self, path: Path) -> int:
        return len(self._names.get(Path(path), {}))

    def apply(self, options, path: Path, prepacking: bool = False) -> None:
        """Hand `path`'s shared weights to the session options (and turn pre-packing off, unless asked)."""
        mine = self._names.get(Path(path), {})
        for name, key in mine.items():
            options.add_initializer(name, self._values[key])
        if mine and not prepacking:
            options.add_session_config_entry("session.disable_prepacking", "1")
