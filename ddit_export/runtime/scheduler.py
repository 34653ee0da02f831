"""Training-free per-step patch-size scheduler of DDiT (arXiv 2602.16968).

Each denoising step the runtime hands the scheduler the sampler's current latent ``z`` (the noisy
state the sampler holds, *before* the model call) and gets back the patch size to run this step
at. Patch sizes are in latent pixels: the base ``p`` (2 for FLUX and Wan) and coarser candidates
such as 4 and 8.

The statistic ("acceleration of the latent manifold")
    The scheduler keeps the last four latents and forms the third backward difference
    ``d3 = z[k] - 3 z[k-1] + 3 z[k-2] - z[k-3]`` (``k`` newest). For each candidate size ``P``
    other than the base, ``d3`` is cut into non-overlapping ``P x P`` spatial blocks; the
    population std of each block is taken over *every* element of the block (all channels, the
    ``P x P`` pixels and, for 5-D video latents ``B x C x F x h x w``, all frames); the
    ``rho``-quantile (linear interpolation, as ``torch.quantile``) of those stds over all blocks of
    the whole batch is the statistic of ``P``. The largest ``P`` whose statistic is strictly
    below ``tau`` wins, otherwise the base size. So a coarse size is used when at least a
    ``rho`` share of its blocks evolve smoothly; ``tau`` is absolute (it depends on latent scale
    and step count) and is meant to be calibrated. Statistics are computed in float32.

Warm-up
    Until four latents have been observed (the first three calls after :meth:`reset`) there is
    no third difference: the scheduler returns ``warmup_patch`` (default: the base) and
    ``stats=None``. ``z[k-3]`` may be the initial noise.

Padding
    Where ``P`` does not divide ``h`` or ``w`` (e.g. Wan 480x832 gives a 60x104 latent and 8 does
    not divide 60), ``d3`` is padded on the bottom/right to the next multiple of ``P`` with
    ``replicate`` mode before blocking. The engines pad the latent the same way before
    patchifying, and replicate padding commutes with the linear difference, so the blocks
    measured here are exactly the tokens the engine will form (including the partly padded edge
    tokens, whose std is lower than an unpadded block's would be).

Cost
    One ring of four latent-sized buffers (latent dtype, latent device) plus one float32
    difference buffer, allocated once per trajectory layout and reused; one host
    synchronisation per step (a single ``.tolist()`` of all candidates' statistics).

Usage::

    cfg = ScheduleConfig(patch_sizes=(2, 4, 8), tau=1e-3, rho=0.4)
    sched = AccelerationScheduler(cfg, total_steps=50)
    for i, t in enumerate(timesteps):
        decision = sched.step(latents, i)          # before the model call
        pred = engines[decision.patch_size](latents, t, ...)   # cond and uncond alike
        latents = sampler.step(pred, t, latents)
    sched.reset()                                  # next image (also automatic at step 0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .predicted_error import WARMUP_STEPS, ErrorModel, block_detail, choose_size
from .rules import DEFAULT_RULE, RULES  # torch-free, for the command line's --rule

__all__ = [
    "DEFAULT_RULE",
    "RULES",
    "AccelerationScheduler",
    "Decision",
    "ErrorModel",
    "ScheduleConfig",
    "block_statistics",
    "select_patch",
]

STATISTICS = ("std", "detail", "x0-detail")
DEFAULT_TAU, DEFAULT_RHO = 1e-3, 0.4  # the paper's defaults (docs/method.md); export and runtime read these
# Number of latents a third backward difference needs.
HISTORY = 4
# d3 = sum(coeff[age] * z[k - age]) with age 0 the newest latent.
_D3_COEFFS = (1.0, -3.0, 3.0, -1.0)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ScheduleConfig:
    """Settings of :class:`AccelerationScheduler`; validated on construction.

    patch_sizes: every size the engines offer, base included, e.g. ``(2, 4, 8)``.
    base_patch: the model's native patch size.
    tau: absolute threshold on the statistic (calibratable; paper default 1e-3).
    rho: quantile as a fraction (0.4 = 40th percentile, the paper default).
    warmup_patch: size used before four latents exist; ``None`` means the base.
    base_last_steps: force the base for the last N steps (needs ``total_steps``).
    base_first_steps: force the base for the first N steps, the composition-forming ones: on the demo a
        base opening keeps the distribution (FD, accuracy) better than a coarse one (docs/quality.md). They
        do not arm the ratchet: the rule's own warm-up and choices start after them.
    settle_steps: after the size changes, keep the new size this many more steps (0: every step
        decides on its own, the paper's rule). A switch changes the velocity, and the third
        differences of the next steps measure that change, not the latent's smoothness; with 2 every
        decision reads a d3 made from one engine's velocities (docs/method.md, Scheduler).
    static_patch: if set, always this size (static runs); stats are then ``None``.
    fixed: a fixed schedule, one size per step (``schedule_spec.parse_schedule("8x14,2x14")``); stats ``None``.
    statistic: ``"std"`` (the paper's: std over every element of a block) or ``"detail"`` (std of what is
        left of the block after removing each channel's block mean: the part of d3 a P x P token cannot
        hold as one value; see `block_statistics`).
    monotone: never go back to a coarser size once a finer one ran (coarse-to-fine with a ratchet).
    size_scaled_tau: size P passes below ``tau * 2 * base / P`` rather than ``tau`` (`select_patch`).
    error_model: for ``statistic="x0-detail"`` (the `predicted-error` rule, `predicted_error.py`): the
        fitted ratio of each coarse size's velocity error to the statistic; ``tau`` is then the squared
        error one step of base tokens is worth, and `AccelerationScheduler.step` needs each step's sigma.
    """

    patch_sizes: tuple[int, ...]
    base_patch: int = 2
    tau: float = DEFAULT_TAU
    rho: float = DEFAULT_RHO
    warmup_patch: int | None = None
    base_last_steps: int = 0
    base_first_steps: int = 0
    static_patch: int | None = None
    settle_steps: int = 0
    fixed: tuple[int, ...] | None = None
    statistic: str = "std"
    monotone: bool = False
    size_scaled_tau: bool = False
    error_model: ErrorModel | None = None

    def to_json(self) -> dict:
        """The settings a run records (generate's trace.json): every field but the error model's coefficients
        (the manifest holds those), tuples as lists."""
        return {f.name: list(v) if isinstance(v, tuple) else v
                for f in fields(self) if f.name != "error_model" for v in [getattr(self, f.name)]}

    def __post_init__(self) -> None:
        sizes = tuple(self.patch_sizes)
        object.__setattr__(self, "patch_sizes", sizes)  # accept lists, store a hashable tuple
        if not sizes:
            raise ValueError("ScheduleConfig.patch_sizes must not be empty")
        if not all(_is_int(p) and p > 0 for p in sizes):
            raise ValueError(f"ScheduleConfig.patch_sizes must be positive ints, got {sizes}")
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"ScheduleConfig.patch_sizes has duplicates: {sizes}")
        if not (_is_int(self.base_patch) and self.base_patch > 0):
            raise ValueError(f"ScheduleConfig.base_patch must be a positive int, got {self.base_patch!r}")
        if self.base_patch not in sizes:
            raise ValueError(f"ScheduleConfig.base_patch={self.base_patch} is not in patch_sizes {sizes}")
        bad = [p for p in sizes if p % self.base_patch]
        if bad:
            raise ValueError(
                f"ScheduleConfig.patch_sizes {bad} are not multiples of base_patch={self.base_patch}"
            )
        if not (isinstance(self.rho, (int, float)) and 0.0 < self.rho < 1.0):
            raise ValueError(f"ScheduleConfig.rho must be a fraction in (0, 1), got {self.rho!r}")
        if not (isinstance(self.tau, (int, float)) and self.tau >= 0.0):  # also rejects NaN
            raise ValueError(f"ScheduleConfig.tau must be >= 0, got {self.tau!r}")
        if self.warmup_patch is not None and self.warmup_patch not in sizes:
            raise ValueError(f"ScheduleConfig.warmup_patch={self.warmup_patch} is not in patch_sizes {sizes}")
        if self.static_patch is not None and self.static_patch not in sizes:
            raise ValueError(f"ScheduleConfig.static_patch={self.static_patch} is not in patch_sizes {sizes}")
        if not (_is_int(self.base_last_steps) and self.base_last_steps >= 0):
            raise ValueError(
                f"ScheduleConfig.base_last_steps must be an int >= 0, got {self.base_last_steps!r}"
            )
        if not (_is_int(self.base_first_steps) and self.base_first_steps >= 0):
            raise ValueError(
                f"ScheduleConfig.base_first_steps must be an int >= 0, got {self.base_first_steps!r}"
            )
        if not (_is_int(self.settle_steps) and self.settle_steps >= 0):
            raise ValueError(f"ScheduleConfig.settle_steps must be an int >= 0, got {self.settle_steps!r}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"ScheduleConfig.statistic must be one of {', '.join(STATISTICS)}, got {self.statistic!r}")
        if self.statistic == "x0-detail" and self.static_patch is None and self.fixed is None:
            if not isinstance(self.error_model, ErrorModel):
                raise ValueError("the predicted-error rule needs the engines' error model: run `ddit-export calibrate "
                                 "ENGINE_DIR --error-model` (or choose another --rule)")
            missing = sorted(set(self.candidates) - set(self.error_model.sizes))
            if missing:
                raise ValueError(f"the error model has no coefficients for sizes {missing}: run `ddit-export "
                                 "calibrate ENGINE_DIR --error-model` again")
        if self.fixed is not None:
            fixed = tuple(self.fixed)
            object.__setattr__(self, "fixed", fixed)
            if not fixed or not all(_is_int(p) for p in fixed):
                raise ValueError(f"ScheduleConfig.fixed must be a non-empty sequence of ints, got {self.fixed!r}")
            unknown = sorted(set(fixed) - set(sizes))
            if unknown:
                raise ValueError(f"ScheduleConfig.fixed uses sizes {unknown} that are not in patch_sizes {sizes}")
            if self.static_patch is not None:
                raise ValueError("ScheduleConfig: give a fixed schedule or a static patch, not both")

    @property
    def candidates(self) -> tuple[int, ...]:
        """Sizes other than the base, largest first (the order they are tried in)."""
        return tuple(sorted((p for p in self.patch_sizes if p != self.base_patch), reverse=True))


@dataclass(frozen=True)
class Decision:
    """Patch size for one step, and the statistic of each candidate (largest first).

    ``stats`` is ``None`` during warm-up and in static mode.
    """

    patch_size: int
    stats: dict[int, float] | None


def block_statistics(d3: torch.Tensor, sizes: Sequence[int], rho: float, statistic: str = "std") -> torch.Tensor:
    """Per-size ``rho``-quantile of block stds of ``d3``, as one float32 tensor on ``d3``'s device.

    ``d3`` is ``B x C x h x w`` or ``B x C x F x h x w``. For each ``P`` in ``sizes`` the grid is
    replicate-padded bottom/right to a multiple of ``P`` (as the engines pad the latent), cut into
    ``P x P`` blocks, the population std is taken over every element of each block (channels,
    frames and pixels), and the ``rho``-quantile is taken over all blocks of the batch.
    ``statistic="detail"`` first removes each channel's mean over the block (and frames), so a block
    whose change is uniform scores 0: it measures structure below the scale ``P``, which differs
    between sizes, where the plain std is dominated by the overall magnitude of ``d3``.
    No host synchronisation happens here.
    """
    if d3.dim() not in (4, 5):
        raise ValueError(f"d3 must be B x C x h x w or B x C x F x h x w, got shape {tuple(d3.shape)}")
    if not 0.0 < rho < 1.0:
        raise ValueError(f"rho must be in (0, 1), got {rho!r}")
    # Frames join channels: the std covers both, and the spatial blocking is the same per frame.
    x = d3.float().flatten(1, -3)
    b, c, h, w = x.shape
    out = []
    for p in sizes:  # a loop over sizes (2-3), never over blocks
        if not (_is_int(p) and p > 0):
            raise ValueError(f"block sizes must be positive ints, got {p!r}")
        pad_h, pad_w = -h % p, -w % p
        xp = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
        blocks = xp.reshape(b, c, (h + pad_h) // p, p, (w + pad_w) // p, p)
        if statistic == "detail":
            blocks = blocks - blocks.mean(dim=(3, 5), keepdim=True)
        stds = blocks.std(dim=(1, 3, 5), correction=0)  # B x h/P x w/P
        out.append(_quantile(stds.flatten(), rho))
    return torch.stack(out) if out else x.new_empty(0)


def _quantile(values: torch.Tensor, rho: float) -> torch.Tensor:
    """`torch.quantile(values, rho)` (linear interpolation) by one sort: 12 us against 18 us on 64 CPU values.

    A NaN anywhere makes the result NaN, as with torch.quantile, so a diverged latent never picks a
    coarse size (sort puts NaNs last; adding 0 * the largest value carries one through).
    """
    ordered = values.sort().values
    position = rho * (ordered.numel() - 1)
    low = int(position)
    high = min(low + 1, ordered.numel() - 1)
    return torch.lerp(ordered[low], ordered[high], position - low) + 0 * ordered[-1]


def select_patch(stats: Mapping[int, float], tau: float, base_patch: int, size_scaled: bool = False) -> int:
    """Largest size whose statistic is strictly below its threshold; the base if none (NaN never wins).

    The threshold is ``tau`` for every size, or with ``size_scaled`` ``tau * 2 * base / P``: ``tau`` for the
    first coarse size, half of it for the next. On real trajectories the statistic of every size is
    nearly the same (docs/method.md), so one threshold makes the coarsest size win whenever any does.
    """
    passing = [p for p, value in stats.items() if value < (tau * 2 * base_patch / p if size_scaled else tau)]
    return max(passing) if passing else base_patch


class AccelerationScheduler:
    """Stateful per-trajectory scheduler: call :meth:`step` once per denoising step.

    One decision per step serves the whole batch, and both classifier-free-guidance passes.
    """

    def __init__(self, config: ScheduleConfig, total_steps: int | None = None) -> None:
        self.config = config
        self.total_steps = self._check_total_steps(total_steps)
        self._ring: torch.Tensor | None = None  # HISTORY x latent shape, latent dtype/device
        self._d3: torch.Tensor | None = None  # float32 latent-shaped work buffer
        self._layout: tuple | None = None  # (shape, dtype, device) the buffers were made for
        self._count = 0  # latents observed since the last reset
        self._patch: int | None = None  # the size decided last (settle_steps)
        self._hold = 0  # steps the current size is still kept for (settle_steps)

    def _check_total_steps(self, total_steps: int | None) -> int | None:
        if total_steps is not None and not (_is_int(total_steps) and total_steps > 0):
            raise ValueError(f"total_steps must be a positive int or None, got {total_steps!r}")
        fixed = self.config.fixed
        if fixed is not None and total_steps is not None and len(fixed) != total_steps:
            raise ValueError(f"the fixed schedule has {len(fixed)} steps but sampling runs {total_steps}: "
                             "give one size per step")
        return total_steps

    @property
    def observed(self) -> int:
        """Latents observed since the last reset."""
        return self._count

    def reset(self, total_steps: int | None = None) -> None:
        """Start a new trajectory (new image / pipeline call); ``total_steps`` None keeps the old one.

        Buffers are kept, so same-shaped trajectories never reallocate.
        """
        if total_steps is not None:
            self.total_steps = self._check_total_steps(total_steps)
        self._count = 0
        self._patch, self._hold = None, 0

    @torch.no_grad()
    def step(self, latent: torch.Tensor, step_index: int, sigma: float | None = None, hold: bool = False) -> Decision:
        """Observe the pre-model latent of step ``step_index`` (0-based), then decide its patch size.

        ``sigma`` is the sampler's noise level at this step (a float); the `predicted-error` rule
        (``statistic="x0-detail"``) needs it, the others ignore it.
        ``hold``: the last step's update came from a step cache, not the model (docs/caching.md): the latent
        is recorded as history but not measured, and the last size is kept (the warm-up and
        ``base_last_steps`` still apply).
        """
        cfg = self.config
        if cfg.static_patch is not None:
            return Decision(cfg.static_patch, None)
        if not (_is_int(step_index) and step_index >= 0):
            raise ValueError(f"step_index must be an int >= 0, got {step_index!r}")
        if cfg.fixed is not None:
            if step_index >= len(cfg.fixed):
                raise ValueError(f"the fixed schedule has {len(cfg.fixed)} steps; step {step_index} was asked for")
            return Decision(cfg.fixed[step_index], None)
        force_base = False
        if cfg.base_last_steps > 0:
            if self.total_steps is None:
                raise ValueError(
                    f"ScheduleConfig.base_last_steps={cfg.base_last_steps} needs total_steps: pass "
                    "AccelerationScheduler(config, total_steps=T) or reset(total_steps=T)"
                )
            force_base = step_index >= self.total_steps - cfg.base_last_steps
        if step_index == 0:  # step 0 always opens a new trajectory, even if reset() was forgotten
            self._count, self._patch, self._hold = 0, None, 0

        hold = hold and self._patch is not None
        if cfg.statistic == "x0-detail":
            stats = self._observe_x0(latent, sigma, measure=not hold)
        else:
            stats = self._observe(latent, measure=not hold)
        if step_index < cfg.base_first_steps:  # observed as history; the ratchet is armed only after them
            return Decision(cfg.base_patch, stats)
        if hold and not force_base:
            return Decision(self._patch, None)
        if stats is None:
            patch = cfg.base_patch if force_base or cfg.warmup_patch is None else cfg.warmup_patch
        elif force_base:
            patch = cfg.base_patch
        elif self._hold > 0:  # settling after a switch: this step's d3 still spans two engines
            self._hold -= 1
            patch = self._patch
        else:
            patch = self._choose(stats)
            if cfg.monotone and self._patch is not None:
                patch = min(patch, self._patch)  # the ratchet: never coarser than the last step
            if self._patch is not None and patch != self._patch:
                self._hold = cfg.settle_steps
        self._patch = patch
        return Decision(patch, stats)

    def _choose(self, stats: dict[int, float]) -> int:
        cfg = self.config
        if cfg.statistic != "x0-detail":
            return select_patch(stats, cfg.tau, cfg.base_patch, cfg.size_scaled_tau)
        return choose_size(stats, cfg.error_model, self._sigma, self._sigma_step, cfg.tau, self._tokens,
                           cfg.base_patch)

    def _observe_x0(self, latent: torch.Tensor, sigma: float | None, measure: bool = True) -> dict[int, float] | None:
        """Keep the previous latent; from the third step on, the block detail of the predicted x0 per candidate."""
        if sigma is None or not isinstance(sigma, (int, float)) or not math.isfinite(sigma):
            raise ValueError(f"the predicted-error rule needs each step's sigma as a finite float, got {sigma!r}")
        if latent.dim() not in (4, 5):
            raise ValueError(
                f"latent must be B x C x h x w or B x C x F x h x w, got shape {tuple(latent.shape)}"
            )
        layout = (latent.shape, latent.dtype, latent.device)
        if layout != self._layout:  # a new layout is a new trajectory: allocate once, then reuse
            self._ring = torch.empty((1, *latent.shape), dtype=latent.dtype, device=latent.device)
            self._d3 = torch.empty(latent.shape, dtype=torch.float32, device=latent.device)
            self._layout = layout
            self._count = 0
            h, w = latent.shape[-2:]
            base = self.config.base_patch
            self._tokens = {p: math.ceil(h / p) * math.ceil(w / p) / (math.ceil(h / base) * math.ceil(w / base))
                            for p in self.config.patch_sizes}
        stats = None
        if measure and self._count >= WARMUP_STEPS and self.config.candidates:
            x0 = self._d3  # z - sigma * v, with v from the last sampler step (predicted_error.predicted_x0)
            step = sigma - self._prev_sigma
            if step == 0:
                raise ValueError(f"two steps at sigma {sigma}: the predicted-error rule needs a decreasing schedule")
            x0.copy_(latent).sub_(self._ring[0]).mul_(-sigma / step).add_(latent)
            values = block_detail(x0, self.config.candidates).tolist()  # one host sync
            stats = dict(zip(self.config.candidates, values))
            self._sigma, self._sigma_step = float(sigma), float(self._prev_sigma - sigma)
        self._ring[0].copy_(latent)
        self._prev_sigma = float(sigma)
        self._count += 1
        return stats

    def _observe(self, latent: torch.Tensor, measure: bool = True) -> dict[int, float] | None:
        """Push ``latent`` into the ring; return the candidates' statistics once 4 latents exist."""
        if latent.dim() not in (4, 5):
            raise ValueError(
                f"latent must be B x C x h x w or B x C x F x h x w, got shape {tuple(latent.shape)}"
            )
        layout = (latent.shape, latent.dtype, latent.device)
        if layout != self._layout:
            # A new layout is a new trajectory: (re)allocate once, then reuse every step.
            shape, dtype, device = layout
            self._ring = torch.empty((HISTORY, *shape), dtype=dtype, device=device)
            self._d3 = torch.empty(shape, dtype=torch.float32, device=device)
            self._layout = layout
            self._count = 0
        ring = self._ring
        ring[self._count % HISTORY].copy_(latent)  # copy: the sampler may update latent in place
        self._count += 1
        if self._count < HISTORY or not measure:
            return None

        candidates = self.config.candidates
        if not candidates:
            return {}
        newest = self._count - 1
        d3 = self._d3
        d3.copy_(ring[newest % HISTORY])  # float32 from here on
        for age in range(1, HISTORY):
            d3.add_(ring[(newest - age) % HISTORY], alpha=_D3_COEFFS[age])
        values = block_statistics(d3, candidates, self.config.rho, self.config.statistic).tolist()  # one host sync
        return dict(zip(candidates, values))
