"""Run each denoising step on the engine of the patch size the DDiT scheduler picks.

    runner = DDiTRunner(backend, schedule_config(backend), total_steps=50)
    for i, t in enumerate(timesteps):
        pred = runner.step(latent, i, timestep=..., encoder_hidden_states=..., ...)
        latent = sampler.step(pred, t, latent)
    runner.finish()
    runner.trace.schedule  # [2, 2, 2, 8, 8, 4, ...]

With classifier-free guidance call `decide` once per step and `run` once per pass: both passes
use the step's one decision, and the scheduler sees the step's latent once.

With a step cache (`cache=StepCache(...)`, staged folders; runtime/cache/) each `run` goes through it:
one cache state per pass of a step (`branch`: the pass's name, by default its order in the step), and
the trace records per step whether it was served from the cache.

The hot path adds nothing to what the scheduler and the engine do: no tensor allocation, no host
synchronisation (the scheduler does its one `.tolist()`; timing uses CUDA events on CUDA).
"""

from __future__ import annotations

import torch

from .backends.base import Backend
from .schedule_spec import check_schedule
from .scheduler import (
    DEFAULT_RHO,
    DEFAULT_RULE,
    DEFAULT_TAU,
    RULES,
    AccelerationScheduler,
    Decision,
    ErrorModel,
    ScheduleConfig,
)
from .trace import Trace, clock_for


def schedule_config(
    backend: Backend,
    *,
    tau: float | None = None,
    rho: float | None = None,
    static_patch: int | None = None,
    warmup_patch: int | None = None,
    base_last_steps: int = 0,
    base_first_steps: int | None = None,
    settle_steps: int | None = None,
    patch_sizes: tuple[int, ...] | None = None,
    schedule: tuple[int, ...] | None = None,
    rule: str | None = None,
) -> ScheduleConfig:
    """Scheduler settings for a backend's engines; tau / rho / rule default to the manifest's calibration.

    `patch_sizes` limits the sizes the scheduler may pick to some of the engines (the base among them).
    `schedule` pins one size per step (a fixed schedule; `schedule_spec.parse_schedule`).
    `rule` names a preset of the dynamic rule (`scheduler.RULES`: statistic, warm-up, ratchet).
    `base_first_steps` defaults to the manifest's (`scheduler.base_first_steps`), else 0.
    """
    defaults = backend.manifest.get("scheduler", {})
    if schedule is not None:
        check_schedule(schedule, backend.patch_sizes, None)
        return ScheduleConfig(patch_sizes=tuple(backend.patch_sizes), base_patch=backend.base_patch,
                              fixed=tuple(schedule))
    rule = defaults.get("rule", DEFAULT_RULE) if rule is None else rule
    if rule not in RULES:
        raise ValueError(f"unknown scheduler rule {rule!r}: choose one of {', '.join(RULES)}")
    preset = RULES[rule]
    default_sizes = tuple(sorted(int(p) for p in defaults.get("patch_sizes") or backend.patch_sizes))
    if patch_sizes is None and static_patch is None and defaults.get("patch_sizes"):  # tuned subset (demo: 2,4)
        patch_sizes = default_sizes
    if patch_sizes is not None:
        unknown = sorted(set(patch_sizes) - set(backend.patch_sizes))
        if unknown or backend.base_patch not in patch_sizes:
            raise ValueError(
                f"patch sizes {sorted(patch_sizes)}: the scheduler can pick only sizes the engines have "
                f"({list(backend.patch_sizes)}), the base {backend.base_patch} among them"
            )
    sizes = tuple(backend.patch_sizes if patch_sizes is None else sorted(patch_sizes))
    if warmup_patch is None:  # the rule's own warm-up, unless the manifest was calibrated for this rule
        own = max(sizes) if preset["warmup"] == "coarsest" else None
        calibrated = defaults.get("warmup_patch") if defaults.get("rule", DEFAULT_RULE) == rule else None
        # the manifest's warm-up was chosen for its own sizes: asked for others (`--sizes 2,4` on a 2,4,8
        # folder, or `--sizes 2,4,8` on one whose default is 2,4) the rule warms up its own way among those,
        # rather than refusing, or keeping a warm-up whose ratchet would shut out a size asked for
        warmup_patch = calibrated if calibrated in sizes and sizes == default_sizes else own
    return ScheduleConfig(
        patch_sizes=sizes,
        base_patch=backend.base_patch,
        tau=float(defaults.get("tau", DEFAULT_TAU) if tau is None else tau),
        rho=float(_default_rho(defaults, rule, preset) if rho is None else rho),
        warmup_patch=warmup_patch,
        base_last_steps=base_last_steps,
        base_first_steps=int(defaults.get("base_first_steps", 0) if base_first_steps is None else base_first_steps),
        settle_steps=int(defaults.get("settle_steps", preset.get("settle", 0)) if settle_steps is None
                         else settle_steps),
        static_patch=static_patch,
        statistic=preset["statistic"],
        monotone=preset["monotone"],
        size_scaled_tau=preset.get("size_scaled_tau", False),
        error_model=ErrorModel.from_json(defaults["error_model"]) if defaults.get("error_model") else None,
    )


def _default_rho(defaults: dict, rule: str, preset: dict) -> float:
    """The manifest's rho when it was set for this rule (calibration), else the rule's own, else DEFAULT_RHO."""
    if defaults.get("rule", DEFAULT_RULE) == rule and "rho" in defaults:
        return defaults["rho"]
    return preset.get("rho", defaults.get("rho", DEFAULT_RHO))


class DDiTRunner:
    """Scheduler + backend for one trajectory at a time, with a per-step trace."""

    def __init__(self, backend: Backend, config: ScheduleConfig, total_steps: int | None = None, cache=None):
        missing = sorted(set(config.patch_sizes) - set(backend.patch_sizes))
        if missing:
            raise ValueError(
                f"the schedule uses patch sizes {missing} that the {backend.name} backend has no engine for "
                f"(it has {list(backend.patch_sizes)})"
            )
        if config.base_patch != backend.base_patch:
            raise ValueError(f"schedule base patch {config.base_patch} != engines' base patch {backend.base_patch}")
        self.backend = backend
        self.config = config
        self.scheduler = AccelerationScheduler(config, total_steps)
        self.clock = clock_for(backend.device)
        self.trace = Trace(self.clock)
        self.decision: Decision | None = None
        self.cache = cache  # a runtime.cache.StepCache, or None
        if cache is not None:
            cache.reset()  # a new runner is a new trajectory: nothing of a previous one is reused
        self.total_steps = total_steps
        self._step, self._calls = -1, 0
        self._all_cached = False  # every engine call of the current step was served from the step cache

    def reset(self, total_steps: int | None = None) -> None:
        """Start a new trajectory; the previous trace is resolved first and stays valid."""
        self.trace.steps  # noqa: B018 - read every pending mark before the clock reuses them
        self.clock.recycle()
        self.trace = Trace(self.clock)
        self.scheduler.reset(total_steps)
        self.decision = None
        self._all_cached = False
        if total_steps is not None:
            self.total_steps = total_steps
        if self.cache is not None:
            self.cache.reset()

    def decide(self, latent: torch.Tensor, step_index: int, sigma: float | None = None) -> Decision:
        """Observe this step's sampler latent (before the model call) and pick its patch size.

        ``sigma``: the sampler's noise level at this step (the predicted-error rule needs it)."""
        if step_index == 0 and len(self.trace):
            self.reset()  # step 0 always opens a new trajectory, as in the scheduler
        start = self.clock.mark()
        # The latent change of a cached step is the cache's, not the model's: with the cache's "hold" policy the
        # scheduler records it but keeps the last size (docs/caching.md, "DDiT's schedule under caching").
        hold = (step_index > 0 and self._all_cached and self.cache is not None
                and getattr(self.cache, "schedule_policy", "observe") == "hold")
        decision = self.scheduler.step(latent, step_index, sigma, hold=hold)
        self.trace.open_step(step_index, decision, start, self.clock.mark())
        self.decision = decision
        self._step, self._calls = step_index, 0
        self._all_cached = False
        return decision

    def run(self, latent: torch.Tensor, branch: str | None = None, **conditioning: torch.Tensor) -> torch.Tensor:
        """One engine call at the current step's patch size (call again for a CFG pass).

        ``branch`` names the pass for the step cache ("cond", "uncond"); by default its order in the step."""
        if self.decision is None:
            raise RuntimeError("DDiTRunner.run before decide: call decide(latent, step_index) first")
        start = self.clock.mark()
        cached = False
        if self.cache is None:
            out = self.backend(self.decision.patch_size, latent, **conditioning)
        else:
            out, cached = self.cache(self.decision.patch_size, latent, step=self._step, total_steps=self.total_steps,
                                     branch=str(self._calls) if branch is None else branch, **conditioning)
        self._all_cached = cached and (self._all_cached or self._calls == 0)
        self._calls += 1
        self.trace.add_engine_call(start, self.clock.mark(), cached)
        return out

    def step(self, latent: torch.Tensor, step_index: int, sigma: float | None = None,
             **conditioning: torch.Tensor) -> torch.Tensor:
        """`decide` then `run`: the prediction for this step's latent."""
        self.decide(latent, step_index, sigma)
        return self.run(latent, **conditioning)

    def finish(self) -> Trace:
        """Close the trajectory's last step (after the final sampler update) and return the trace."""
        self.trace.finish(self.clock.mark())
        return self.trace
