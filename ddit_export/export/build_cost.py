"""What building an engine cost: seconds, peak host memory (RSS) and peak GPU memory, recorded per engine.

An engine's build runs in pieces (the first half of its stage with the model in memory, the second after
the model is dropped: stages.py); `BuildCost` measures one piece and `record` writes the pieces' total
time and highest peaks into the manifest entry (`export_seconds`, `peak_host_bytes`, `peak_gpu_bytes`).
"""

from __future__ import annotations

import time

import torch

from ..util.memory import PeakMemory


class BuildCost:
    """`with BuildCost(gpu) as cost: ...` then `cost.seconds`, `cost.host_bytes`, `cost.gpu_bytes` (None off GPU)."""

    def __init__(self, gpu: bool = False):
        self.gpu = gpu and torch.cuda.is_available()
        self.seconds, self.host_bytes, self.gpu_bytes = 0.0, 0, None
        self._peak = PeakMemory()

    def __enter__(self) -> BuildCost:
        if self.gpu:
            torch.cuda.reset_peak_memory_stats()
        self._started = time.perf_counter()
        self._peak.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._peak.__exit__(*exc)
        self.seconds = time.perf_counter() - self._started
        self.host_bytes = self._peak.host_bytes
        if self.gpu:
            self.gpu_bytes = int(torch.cuda.max_memory_allocated())


def record(entry: dict, costs: list[BuildCost]) -> dict:
    """The entry with its build's total seconds and peak memory (the highest of its pieces)."""
    entry = {**entry, "export_seconds": round(sum(c.seconds for c in costs), 3),
             "peak_host_bytes": max(c.host_bytes for c in costs)}
    gpu = [c.gpu_bytes for c in costs if c.gpu_bytes is not None]
    if gpu:
        entry["peak_gpu_bytes"] = max(gpu)
    return entry
