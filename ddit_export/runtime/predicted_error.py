"""The `predicted-error` rule: run a coarse size when the error it is predicted to add is worth its tokens.

Why (docs/method.md, "The predicted-error rule"): on the demo the paper's statistic (block std of the
latent's third difference) follows the step-size profile and the sampler's noise, and hardly tells a
textured sample from a flat one. What does tell them apart is how much structure the *predicted clean
latent* has inside a P x P block: a P-token has to carry that structure, and the coarse engine's
velocity error grows with it (correlation 0.8-0.95 across samples at every step after the first few).

Statistic, per candidate size P, at step k (sigma_k the sampler's noise level, z_k its latent):
    v      = (z_k - z_{k-1}) / (sigma_k - sigma_{k-1})    the velocity the sampler just applied
    x0     = z_k - sigma_k * v                             the clean latent it predicts
    s_k(P) = RMS of x0 minus its per-channel P x P block mean  (frames count as channels; the grid is
             replicate-padded to a multiple of P, as the engines pad)
Predicted error of running step k at P: e_k(P) = c_P(sigma_k) * s_k(P) * (sigma_{k-1} - sigma_k), where
c_P(sigma) is the model's own ratio of velocity error to statistic, fitted by `ddit-export calibrate
--error-model` on base trajectories (`ErrorModel`), interpolated in sigma so any step count works.
Decision (rate-distortion): the size minimising e_k(P)^2 + tau * tokens(P) / tokens(base), the base's
error being 0; so tau is the squared latent error one step of base tokens is worth. The rule starts at
the coarsest size for two steps (x0 needs two latents, and the first is noise) and never goes coarser
again once a finer size ran (a later coarse step would undo detail the fine steps made).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

WARMUP_STEPS = 4


@dataclass(frozen=True)
class ErrorModel:
    """Per size P: the coarse engine's velocity error per unit of statistic, as a function of sigma.

    ``sigmas`` ascending; ``coefficients[P]`` one value per sigma (linear interpolation between them,
    the end values beyond them).
    """

    sigmas: tuple[float, ...]
    coefficients: tuple[tuple[int, tuple[float, ...]], ...]

    def __post_init__(self) -> None:
        sigmas = tuple(float(s) for s in self.sigmas)
        object.__setattr__(self, "sigmas", sigmas)
        if not sigmas or any(not math.isfinite(s) for s in sigmas) or list(sigmas) != sorted(set(sigmas)):
            raise ValueError(f"ErrorModel.sigmas must be finite, distinct and ascending, got {self.sigmas!r}")
        coefficients = tuple((int(p), tuple(float(c) for c in cs)) for p, cs in self.coefficients)
        object.__setattr__(self, "coefficients", coefficients)
        for p, cs in coefficients:
            if len(cs) != len(sigmas) or any(not (math.isfinite(c) and c >= 0) for c in cs):
                raise ValueError(f"ErrorModel: size {p} needs {len(sigmas)} finite coefficients >= 0, got {cs!r}")
        object.__setattr__(self, "_table", dict(coefficients))  # size -> coefficients, read every step

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(p for p, _ in self.coefficients)

    def coefficient(self, size: int, sigma: float) -> float:
        table = self._table
        if size not in table:
            raise ValueError(f"the error model has no size {size} (it was fitted for {list(self.sizes)}); "
                             "run `ddit-export calibrate ENGINE_DIR --error-model` again")
        return _interp(float(sigma), self.sigmas, table[size])

    def to_json(self) -> dict:
        return {"sigmas": list(self.sigmas), "coefficients": {str(p): list(cs) for p, cs in self.coefficients}}

    @classmethod
    def from_json(cls, data: Mapping) -> ErrorModel:
        try:
            return cls(tuple(data["sigmas"]), tuple((int(p), tuple(cs)) for p, cs in data["coefficients"].items()))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"the manifest's scheduler.error_model is damaged ({exc}); run `ddit-export calibrate "
                             "ENGINE_DIR --error-model` again") from exc


def _interp(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    """numpy.interp for one point, without numpy: clamped at the ends."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    hi = next(i for i, v in enumerate(xs) if v >= x)
    lo = hi - 1
    w = (x - xs[lo]) / (xs[hi] - xs[lo])
    return ys[lo] + w * (ys[hi] - ys[lo])


def predicted_x0(latent: torch.Tensor, previous: torch.Tensor, sigma: float, previous_sigma: float) -> torch.Tensor:
    """The clean latent the last sampler step implies (float32): z - sigma * (z - z_prev) / (sigma - sigma_prev)."""
    step = sigma - previous_sigma
    if step == 0:
        raise ValueError(f"two steps at the same sigma {sigma}: the predicted-error rule needs a decreasing schedule")
    z = latent.float()
    return z - (sigma / step) * (z - previous.float())


def block_detail(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Per size P: RMS of ``x`` minus its per-channel P x P block means (frames count as channels).

    ``x`` is ``B x C x h x w`` or ``B x C x F x h x w``; replicate-padded bottom/right to a multiple of
    P as the engines pad. One float32 tensor on ``x``'s device; no host synchronisation.
    """
    x = x.float().flatten(1, -3)
    h, w = x.shape[-2:]
    out = []
    for p in sizes:
        pad_h, pad_w = -h % p, -w % p
        xp = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
        # The mean over equal-sized blocks of each block's variance is E[x^2] - E[block mean^2]: three
        # reductions, half the time of subtracting the means block by block. Block means by a reshaped
        # mean, not avg_pool2d: avg_pool2d's CPU kernel always forks torch's thread pool (grain size 0),
        # and between ONNX Runtime calls on a 2-core machine that fork waited 0.5 ms per call for a core
        # (half of all host time per step, docs/serving.md); a small reduction stays on this thread.
        b, c, hp, wp = xp.shape
        means = xp.reshape(b, c, hp // p, p, wp // p, p).mean(dim=(3, 5))
        out.append(xp.square().mean() - means.square().mean())
    return torch.stack(out).clamp_min(0).sqrt() if out else x.new_empty(0)


def choose_size(details: Mapping[int, float], model: ErrorModel, sigma: float, step: float, tau: float,
                tokens: Mapping[int, float], base_patch: int) -> int:
    """The size minimising predicted error^2 + tau * token share (the base: error 0, share 1); NaN never wins."""
    best, best_cost = base_patch, tau * tokens[base_patch]
    for p, detail in details.items():
        error = model.coefficient(p, sigma) * detail * step
        cost = error * error + tau * tokens[p]
        if cost < best_cost:  # NaN compares False: a diverged latent keeps the base
            best, best_cost = p, cost
    return best
