"""Resident memory of a loaded backend: the bytes of weights it holds for all its sizes, and RSS.

Weight bytes are counted from what the backend actually holds, each distinct tensor once:
- torch backends: every parameter and buffer storage of the loaded modules (shared storages once);
- staged AOTInductor: the one set of tensors every package's constants point at;
- ONNX Runtime: the initializers of every graph a session was made from; for a staged folder the
  weights handed to several sessions as one value (`SharedWeights`) count once, the trunk once.
Process RSS (CPU) and CUDA memory are measured around the load, so they include what the counting
cannot see (pre-packed copies, arenas, the Python objects of the loader).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _module_bytes(modules) -> int:
    return _tensor_bytes(t for module in modules for t in [*module.parameters(), *module.buffers()])


def _graph_weight_bytes(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            total += int({e.key: e.value for e in init.external_data}.get("length", 0))
        else:
            count = 1
            for d in init.dims:
                count *= d
            total += count * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    return total


def weight_bytes(backend) -> int | None:
    """Bytes of weights `backend` holds for all its sizes; None where it cannot be counted."""
    if hasattr(backend, "staged") and isinstance(backend.staged, torch.nn.Module):
        return _module_bytes([backend.staged])
    if hasattr(backend, "_engines") and all(isinstance(m, torch.nn.Module) for m in backend._engines.values()):
        return _module_bytes(backend._engines.values())
    if isinstance(getattr(backend, "weights", None), dict):  # staged AOTInductor: one shared weights file
        return _tensor_bytes(backend.weights.values())
    if hasattr(backend, "chain"):  # staged ONNX Runtime: distinct graphs, pooled weights once
        graphs = set(backend.chain.sessions)
        return sum(_graph_weight_bytes(p) for p in graphs) - backend.chain.shared.duplicate_bytes
    sessions = getattr(backend, "_sessions", None)
    if sessions:
        from ..artifacts.manifest import engine_entries

        entries = engine_entries(backend.manifest, "onnx")
        return sum(_graph_weight_bytes(backend.folder / entries[p]["files"][0]) for p in sessions)
    return None


def memory_row(backend, rss_before: int, rss_after: int) -> dict:
    row = {"backend": backend.name, "layout": backend.manifest.get("layout", "single"),
           "sizes": list(backend.patch_sizes), "weight_bytes": weight_bytes(backend),
           "rss_load_bytes": rss_after - rss_before}
    if backend.device.type == "cuda":
        row["cuda_allocated_bytes"] = torch.cuda.memory_allocated(backend.device)
    return row


def memory_markdown(rows: list[dict]) -> list[str]:
    """The resident-memory table of a bench report (empty when nothing was measured)."""
    if not rows:
        return []
    lines = ["", "## Resident memory after loading all sizes", "",
             "| backend | layout | sizes | weights MiB | process RSS at load MiB |", "|---|---|---|---|---|"]
    for m in rows:
        weights = "n/a" if m["weight_bytes"] is None else f"{m['weight_bytes'] / 2**20:.1f}"
        sizes = ",".join(str(p) for p in m["sizes"])
        lines.append(f"| {m['backend']} | {m['layout']} | {sizes} | {weights} | {m['rss_load_bytes'] / 2**20:.1f} |")
    return lines
