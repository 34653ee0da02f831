"""A step cache on a staged backend: one call = embed, then the trunk or the cached residual, then the head.

    cache = StepCache(backend, parse_cache("teacache:0.25"))
    pred, cached = cache(patch, latent, step=i, total_steps=28, branch="cond", **conditioning)

TeaCache: the embed's signal decides (`teacache.py`); a skipped step adds the residual of the block
stack stored at the last full step of this size and branch to the new step's image tokens, then runs
the head. First-block cache: block 0 always runs and its residual decides (`first_block.py`); a
skipped step adds the stored residual of blocks 1..N to block 0's output. With the cache never
skipping (threshold 0) the parts compute exactly what `backend(patch, latent, ...)` computes.
Only staged folders have the parts; a single-layout folder is refused with the fix.
"""

from __future__ import annotations

import torch

from ..backends.base import BackendError
from ..backends.staged.calls import StagedCalls
from .coefficients import teacache_coefficients
from .first_block import FirstBlockPolicy
from .signal import teacache_signal
from .spec import CacheSpec
from .state import CacheStates
from .teacache import TeaCachePolicy


def require_staged(backend) -> None:
    if not isinstance(backend, StagedCalls):
        layout = backend.manifest.get("layout", "single")
        raise BackendError(f"--cache needs a staged engine folder (its trunk returns the residual that a cached step "
                           f"reuses); {backend.folder} has the {layout} layout: re-export it with --layout staged")


SCHEDULE_POLICIES = ("observe", "hold")


class StepCache:
    """``schedule``: what a DDiT scheduler does on the step after a cached one (docs/caching.md):
    "observe" measures that latent as any other; "hold" records it but keeps the last size, since its
    change came from the cache, not the model.
    ``warmup_steps``: the first N steps always run in full (TeaCache's "ret_steps"); with DDiT, the steps
    the scheduler's warm-up reads (docs/caching.md)."""

    def __init__(self, backend, spec: CacheSpec, coefficients=None, schedule: str = "observe", warmup_steps: int = 0):
        require_staged(backend)
        if schedule not in SCHEDULE_POLICIES:
            raise ValueError(f"StepCache schedule must be one of {', '.join(SCHEDULE_POLICIES)}, got {schedule!r}")
        if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
            raise ValueError(f"StepCache warmup_steps must be an int >= 0, got {warmup_steps!r}")
        self.backend, self.spec, self.schedule_policy, self.warmup_steps = backend, spec, schedule, warmup_steps
        if spec.kind == "teacache":
            if coefficients is None:
                coefficients, self.coefficients_source = teacache_coefficients(backend.manifest)
            else:
                self.coefficients_source = "given"
            self.policy = TeaCachePolicy(spec.threshold, coefficients)
            self.signal = teacache_signal(backend)
        else:
            backend._require_split()
            self.policy = FirstBlockPolicy(spec.threshold)
            self.coefficients_source = None
        self.states = CacheStates()

    def reset(self) -> None:
        """A new trajectory: nothing of the last one may be reused."""
        self.states.clear()

    def __call__(self, patch: int, latent: torch.Tensor, *, step: int, total_steps: int | None, branch: str = "0",
                 **conditioning: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The prediction at `patch` and whether the step was served from the cache."""
        backend = self.backend
        values = backend.run_embed(patch, latent, **conditioning)
        state = self.states.get(patch, branch)
        scale = 0.0 if step < self.warmup_steps else 1.0  # threshold 0 never skips: the warm-up always runs
        if self.policy.kind == "teacache":
            compute = self.policy.should_compute(state, self.signal(values), step, total_steps, scale)
            if compute:
                values = backend.run_trunk(patch, values)
                state.residual = values["block_residual"].clone()
            else:
                values = {**values, "trunk_tokens": values["tokens"] + state.residual}
        else:
            values = backend.run_first_block(patch, values)
            head = values["head_tokens"]
            compute = self.policy.should_compute(state, head - values["tokens"], step, total_steps, scale)
            if compute:
                values = backend.run_other_blocks(patch, values)
                state.residual = values["trunk_tokens"] - head
            else:
                values = {**values, "trunk_tokens": head + state.residual}
        return backend.run_head(patch, values, latent.device), not compute

    def describe(self) -> dict:
        return {"kind": self.spec.kind, "threshold": self.spec.threshold,
                "coefficients": list(getattr(self.policy, "coefficients", ())) or None,
                "coefficients_source": self.coefficients_source, "schedule": self.schedule_policy,
                "warmup_steps": self.warmup_steps}
