"""TeaCache's decision (ali-vilab/TeaCache), unchanged except that its state lives per size and branch.

Per call: x = relative L1 change of the signal since the previous step (mean|s - s_prev| / mean|s_prev|),
rescaled by the model's polynomial and accumulated; while the sum stays below the threshold the block
stack is skipped and the last computed residual added to the new step's tokens; otherwise the stack runs
and the sum restarts. The first and the last step always run, and so does the first call at a size.
"""

from __future__ import annotations

import torch

from .coefficients import rescale
from .state import BranchState


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """mean|current - previous| / mean|previous|, computed in fp32 (one host read)."""
    current, previous = current.float(), previous.float()
    return float((current - previous).abs().mean() / previous.abs().mean())


class TeaCachePolicy:
    kind = "teacache"

    def __init__(self, threshold: float, coefficients):
        self.threshold = float(threshold)
        self.coefficients = tuple(float(c) for c in coefficients)

    def should_compute(self, state: BranchState, signal: torch.Tensor, step: int, total_steps: int | None,
                       scale: float = 1.0) -> bool:
        """Update `state` with this step's signal; True when the block stack must run (threshold times `scale`)."""
        forced = state.signal is None or state.residual is None or step == 0 or (
            total_steps is not None and step == total_steps - 1)
        if forced:
            compute = True
        else:
            state.accumulated += rescale(self.coefficients, relative_l1(signal, state.signal))
            compute = not state.accumulated < self.threshold * scale
        if compute:
            state.accumulated = 0.0
        state.signal = signal.detach().clone()  # TeaCache keeps every step's signal, skipped or not
        return compute
