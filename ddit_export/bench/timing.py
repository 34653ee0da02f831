"""Clocks and summaries shared by every benchmark.

CUDA work is asynchronous, so on a GPU a call is timed with CUDA events on the current stream
(the end event is waited on before the next call, so calls never overlap); on the CPU the work
is synchronous and `time.perf_counter` is exact.
"""

from __future__ import annotations

import math
import statistics
import time

import torch


class Stopwatch:
    """`start()` then `stop() -> seconds`, with CUDA events on a CUDA device."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self._begin = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
        self._t0 = 0.0

    @property
    def kind(self) -> str:
        return "cuda-events" if self.cuda else "perf_counter"

    def start(self) -> None:
        if self.cuda:
            self._begin.record(torch.cuda.current_stream(self.device))
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self._end.record(torch.cuda.current_stream(self.device))
            self._end.synchronize()
            return self._begin.elapsed_time(self._end) / 1000.0
        return time.perf_counter() - self._t0


def percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of an already sorted list."""
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(seconds: list[float]) -> dict:
    """mean / p50 / p95 / p99 / min / std in milliseconds, and the sample count."""
    if not seconds:
        raise ValueError("no samples to summarise")
    ordered = sorted(seconds)
    return {
        "mean_ms": 1e3 * statistics.fmean(ordered),
        "p50_ms": 1e3 * percentile(ordered, 0.50),
        "p95_ms": 1e3 * percentile(ordered, 0.95),
        "p99_ms": 1e3 * percentile(ordered, 0.99),
        "min_ms": 1e3 * ordered[0],
        "std_ms": 1e3 * (statistics.pstdev(ordered) if len(ordered) > 1 else 0.0),
        "iters": len(ordered),
    }


def rotated(items: list, k: int) -> list:
    """``items`` starting at position k: round r begins with a different item, so no item is always first."""
    k %= max(1, len(items))
    return items[k:] + items[:k]
