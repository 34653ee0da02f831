"""Fit the predicted-error rule's error model on the engines' own base trajectories.

For every sample the static base runs as usual; at every step each coarse engine also runs on the very
same latent and inputs (its output is discarded), so the coarse engine's velocity error at that step is
measured exactly. With the statistic the scheduler computes at that step (`predicted_error`), the
coefficient of size P at sigma_k is the median over samples of error / statistic: what the scheduler
multiplies the statistic by at run time. Extra cost: one call per coarse size per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..runtime.predicted_error import WARMUP_STEPS, ErrorModel, block_detail, predicted_x0


class _ComparingBackend:
    """A backend that answers with the base engine and meanwhile measures each coarse engine's error."""

    def __init__(self, backend, sizes: tuple[int, ...]):
        self._backend, self._sizes, self.errors = backend, sizes, []

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def __call__(self, patch_size: int, latent: torch.Tensor, **conditioning: torch.Tensor) -> torch.Tensor:
        out = self._backend(patch_size, latent, **conditioning).clone()  # the backend may reuse its buffer
        row = {}
        for p in self._sizes:
            coarse = self._backend(p, latent, **conditioning).float()
            row[p] = float((coarse - out.float()).pow(2).mean().sqrt())
        self.errors.append(row)
        return out


@torch.no_grad()
def fit_error_model(backend, samples: list[tuple[object, int]], steps: int,
                    progress: Callable[[], None] | None = None) -> tuple[ErrorModel, dict]:
    """``samples``: (conditioning, seed) pairs. Returns the model and a record for the manifest."""
    from ..pipelines import generate
    from ..runtime.runner import schedule_config

    if steps <= WARMUP_STEPS + 1:
        raise ValueError(f"--steps must be more than {WARMUP_STEPS + 1} to fit an error model (got {steps})")
    sizes = tuple(sorted((p for p in backend.patch_sizes if p != backend.base_patch), reverse=True))
    if not sizes:
        raise ValueError("the engines have only the base size: there is no coarse size to model")
    ratios: dict[tuple[int, int], list[float]] = {}
    sigmas: list[float] = []
    for conditioning, seed in samples:
        probe = _ComparingBackend(backend, sizes)
        result = generate(probe, conditioning, schedule_config(backend, static_patch=backend.base_patch),
                          steps=steps, seed=seed, return_trajectory=True)
        sigmas = (result.timesteps.float() / 1000).tolist()  # FlowMatch and UniPC-flow: timestep = 1000 sigma
        calls = len(probe.errors) // steps  # 2 with two-call CFG: average the passes
        z = result.trajectory
        for k in range(WARMUP_STEPS, steps):
            x0 = predicted_x0(z[k], z[k - 1], sigmas[k], sigmas[k - 1])
            detail = block_detail(x0, sizes).tolist()
            for j, p in enumerate(sizes):
                error = sum(row[p] for row in probe.errors[k * calls:(k + 1) * calls]) / calls
                ratios.setdefault((k, p), []).append(error / detail[j] if detail[j] > 0 else 0.0)
        if progress is not None:
            progress()
    order = sorted(range(WARMUP_STEPS, steps), key=lambda k: sigmas[k])  # ascending sigma
    model = ErrorModel(
        tuple(sigmas[k] for k in order),
        tuple((p, tuple(float(torch.tensor(ratios[(k, p)]).median()) for k in order)) for p in sizes))
    return model, {"samples": len(samples), "steps": steps}
