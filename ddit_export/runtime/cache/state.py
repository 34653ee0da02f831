"""Cache state per (patch size, guidance branch), dropped whenever the patch size changes.

A stored residual has the token count of its size, and a stored signal was measured on that size's
tokens, so neither may serve another size: the first call at a new size finds no state and runs
the full step (DDiT composed with caching). Guidance branches ("cond", "uncond", or one state for a
batched call) keep separate states, as TeaCache4Wan2.1 and diffusers' `cache_context` do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BranchState:
    signal: torch.Tensor | None = None  # TeaCache: last step's signal; FBCache: last computed block-0 residual
    accumulated: float = 0.0  # TeaCache's accumulated rescaled distance since the last full step
    residual: torch.Tensor | None = None  # TeaCache: block-stack residual; FBCache: residual of blocks 1..N


class CacheStates:
    """The live states: those of one patch size only."""

    def __init__(self):
        self.patch: int | None = None
        self._states: dict[str, BranchState] = {}

    def get(self, patch: int, branch: str) -> BranchState:
        if patch != self.patch:  # a size switch: nothing stored at another size may be reused
            self._states.clear()
            self.patch = patch
        return self._states.setdefault(branch, BranchState())

    def clear(self) -> None:
        self._states.clear()
        self.patch = None
