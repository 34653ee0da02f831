"""First-block caching as diffusers' `FirstBlockCacheConfig` (hooks/first_block_cache.py) does it.

Per call: run block 0; compare its residual (output minus input tokens) with the one stored at the last
full step: mean|r - r_prev| / mean|r_prev|. Below the threshold the remaining blocks are skipped and
their stored residual is added to block 0's output; otherwise they run, and block 0's residual and the
remaining blocks' residual are stored. Nothing is forced but the first call at a size (no stored state),
as in diffusers; the threshold is not rescaled.
"""

from __future__ import annotations

import torch

from .state import BranchState
from .teacache import relative_l1


class FirstBlockPolicy:
    kind = "fbcache"

    def __init__(self, threshold: float):
        self.threshold = float(threshold)

    def should_compute(self, state: BranchState, head_residual: torch.Tensor, step: int,
                       total_steps: int | None, scale: float = 1.0) -> bool:
        if state.signal is None or state.residual is None:
            compute = True
        else:
            compute = not relative_l1(head_residual, state.signal) < self.threshold * scale
        if compute:  # diffusers stores block 0's residual only at full steps
            state.signal = head_residual.detach().clone()
        return compute
