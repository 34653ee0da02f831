"""`ddit-export calibrate --cache`: fit TeaCache's rescaling polynomial on the model's own trajectories.

The TeaCache recipe (ali-vilab/TeaCache): sample trajectories with every step computed, and for each
pair of consecutive steps record x = the relative L1 change of the input signal (`runtime/cache/signal.py`)
and y = the relative L1 change of the block stack's output residual (what a cached step reuses); fit
y ~ poly4(x) by least squares. Here the trajectories run at every patch size the engines have (a static
run per size), pairs are taken only within one size and guidance branch (a residual of one size says
nothing about another's), and the fit is stored in the manifest as `cache.teacache`, which
`runtime/cache/coefficients.py` prefers to any published polynomial.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..artifacts.manifest import update_block
from ..runtime.cache import StepCache, parse_cache
from ..runtime.cache.teacache import relative_l1

DEGREE = 4  # TeaCache's polynomials are 4th order


@dataclass
class Pair:
    patch: int
    step: int
    x: float  # input-signal change
    y: float  # output-residual change


class RecordingCache(StepCache):
    """Computes every step (threshold 0) and records the signal and the residual of each call."""

    def __init__(self, backend):
        super().__init__(backend, parse_cache("teacache:0"), coefficients=(0.0,))
        self.last: dict = {}  # (patch, branch) -> (step, signal, residual)
        self.pairs: list[Pair] = []

    def reset(self) -> None:
        super().reset()
        self.last = {}

    def __call__(self, patch, latent, *, step, total_steps, branch="0", **conditioning):
        backend = self.backend
        values = backend.run_trunk(patch, backend.run_embed(patch, latent, **conditioning))
        signal, residual = self.signal(values).float().clone(), values["block_residual"].float().clone()
        prev = self.last.get((patch, branch))
        if prev is not None and prev[0] == step - 1:
            self.pairs.append(Pair(patch, step, relative_l1(signal, prev[1]), relative_l1(residual, prev[2])))
        self.last[(patch, branch)] = (step, signal, residual)
        return backend.run_head(patch, values, latent.device), False


def collect_pairs(backend, conditionings: list, seeds: list[int], steps: int, progress=None) -> list[Pair]:
    """Every consecutive-step pair of static runs at each of the backend's sizes."""
    from ..pipelines import generate
    from ..runtime.runner import schedule_config

    recorder = RecordingCache(backend)
    runs = [(p, c, s) for p in backend.patch_sizes for c in conditionings for s in seeds]
    with torch.no_grad():
        for k, (patch, cond, seed) in enumerate(runs):
            generate(backend, cond, schedule_config(backend, static_patch=patch), steps=steps, seed=seed,
                     cache=recorder)
            if progress:
                progress(k + 1, len(runs))
    return recorder.pairs


def fit_polynomial(pairs: list[Pair]) -> dict:
    """Least-squares 4th-order fit y ~ poly(x), highest degree first, with its R^2 and the x range."""
    if len(pairs) <= DEGREE:
        raise ValueError(f"{len(pairs)} step pairs are too few for a degree-{DEGREE} fit: raise --steps or --seeds")
    x = np.array([p.x for p in pairs], dtype=np.float64)
    y = np.array([p.y for p in pairs], dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("a trajectory produced a non-finite change (NaN or inf in the engines' outputs)")
    coefficients = np.polyfit(x, y, DEGREE)
    residual = y - np.polyval(coefficients, x)
    r2 = 1.0 - float((residual ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-30))
    return {"coefficients": [float(c) for c in coefficients], "pairs": len(pairs), "r2": r2,
            "x_range": [float(x.min()), float(x.max())], "y_range": [float(y.min()), float(y.max())]}


def store_cache_fit(folder, expected: dict, record: dict) -> Path:
    """Write `cache.teacache` into the manifest atomically; refuses when the folder was re-exported meanwhile."""
    return update_block(folder, expected, "cache", {"teacache": record}, doing="calibrating --cache")
