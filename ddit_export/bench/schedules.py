"""Dynamic rules against fixed schedules of the same cost: the test every DDiT setting must pass.

A dynamic rule earns its keep only if no fixed schedule of equal or lower token cost gives images as
close to the static base. This module builds the fixed families, runs every schedule on the same
samples (prompt x seed) as the static base, and places each point by cost and quality:

  token_cost / flop_cost  mean over samples of the schedule's token (FLOP) sum relative to all-base
  psnr / ssim             of the whole batch against the static base's batch (decoded images where the
                          model has a decoder, final latents otherwise), as `ddit-export demo` reports
  extra scores            any `score(images, prompts) -> dict` given (the demo: class accuracy, FD)

The fixed front is the fixed points no other fixed point beats at lower or equal cost; a dynamic point
is *above* it when no fixed point of equal or lower cost reaches its quality, and its quality exceeds
the front interpolated linearly between the front points just below and just above its cost. Quality
is one metric (`FRONT_METRICS`, `ddit-export schedules --front-metric`): PSNR vs the static base (the
default), or, where the model has scores, Frechet distance to real images (lower is better) or class
accuracy. PSNR follows the base's trajectory; FD and accuracy ask whether the images keep the base's
distribution, the paper's measure (FID), which a fixed schedule can win while the rule wins PSNR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..runtime.schedule_spec import format_schedule
from .end_to_end import schedule_cost

__all__ = ["FRONT_METRICS", "SchedulePoint", "evaluate", "fixed_families", "mark_front"]

# metric -> (where a point keeps it, +1 when higher is better / -1 when lower is)
FRONT_METRICS = {"psnr": ("psnr", 1), "fd": ("fd", -1), "accuracy": ("accuracy", 1)}


def _even_positions(count: int, steps: int) -> set[int]:
    """``count`` step indices spread evenly over ``steps`` (the last step included when count > 0)."""
    return {round(steps - 1 - i * steps / count) for i in range(count)} if count else set()


def fixed_families(steps: int, sizes: list[int], base: int, base_steps: list[int] | None = None) -> dict[str, tuple]:
    """Named fixed schedules: coarse-then-base, base-then-coarse, spread, and mixed coarse-to-fine.

    ``base_steps`` are the k values (base steps per schedule) of the first three families (default a
    grid from 0 to all but a few). Names read like the spec: ``c2f 4x25,2x3``.
    """
    coarse = sorted((p for p in sizes if p != base), reverse=True)
    if base_steps is None:
        base_steps = sorted({k for k in (0, 1, 2, 3, 4, 6, 8, 10, 12, 14, 18, 22) if k < steps})
    out: dict[str, tuple] = {}

    seen: set[tuple] = set()

    def add(family: str, schedule: list[int]) -> None:
        if tuple(schedule) not in seen:  # one point per schedule: the first family that makes it names it
            seen.add(tuple(schedule))
            out[f"{family} {format_schedule(schedule)}"] = tuple(schedule)

    for c in coarse:
        for k in base_steps:
            add("coarse-then-base", [c] * (steps - k) + [base] * k)
            add("base-then-coarse", [base] * k + [c] * (steps - k))
            spread = _even_positions(k, steps)
            add("spread", [base if i in spread else c for i in range(steps)])
    if len(coarse) >= 2:  # mixed coarse-to-fine: coarsest, then the next sizes, then the base
        quarter = max(1, steps // 8)
        for a in range(quarter, steps, quarter):
            for b in range(quarter, steps - a, quarter):
                k = steps - a - b
                if k >= 1:
                    add("mixed", [coarse[0]] * a + [coarse[1]] * b + [base] * k)
    return out


@dataclass
class SchedulePoint:
    label: str
    kind: str  # "fixed" | "dynamic" | "base"
    schedules: list[list[int]] = field(default_factory=list)
    token_cost: float = 1.0
    flop_cost: float = 1.0
    psnr: float = float("inf")
    ssim: float = 1.0
    scores: dict = field(default_factory=dict)
    seconds_per_image: float = 0.0
    front: bool = False  # on the fixed-schedule front (fixed points only)
    above_front: bool | None = None  # dynamic points only
    front_at_cost: float | None = None  # the front (in the front metric) interpolated at this point's cost
    front_metric: str = "psnr"
    cost_per_prompt: dict = field(default_factory=dict)  # mean token cost of each prompt's samples
    same_as: str | None = None  # dynamic points: the fixed schedule every sample got, if they all got one

    @property
    def front_psnr_at_cost(self) -> float | None:
        """The PSNR front at this cost (None when the front is on another metric)."""
        return self.front_at_cost if self.front_metric == "psnr" else None

    def value(self, metric: str) -> float:
        """This point's figure of ``metric`` (a `FRONT_METRICS` key)."""
        if metric == "psnr":
            return self.psnr
        if metric not in self.scores:
            raise ValueError(f"--front-metric {metric}: this model has no {metric} score (only the demo's classifier "
                             "gives FD and accuracy); use --front-metric psnr")
        return float(self.scores[metric])

    def goodness(self, metric: str) -> float:
        """The figure signed so that higher is better (FD negated)."""
        return FRONT_METRICS[metric][1] * self.value(metric)

    @property
    def distinct_schedules(self) -> int:
        return len({tuple(s) for s in self.schedules})

    def row(self) -> dict:
        return {"label": self.label, "kind": self.kind, "token_cost": self.token_cost, "flop_cost": self.flop_cost,
                "psnr_db": self.psnr, "ssim": self.ssim, **self.scores,
                "seconds_per_image": self.seconds_per_image,
                "distinct_schedules": self.distinct_schedules, "front": self.front, "above_front": self.above_front,
                "front_metric": self.front_metric, "front_at_cost": self.front_at_cost,
                "front_psnr_at_cost": self.front_psnr_at_cost, "same_as": self.same_as,
                "token_cost_per_prompt": self.cost_per_prompt,
                "schedules": [format_schedule(x) for x in self.schedules]}


def evaluate(backend, samples: list[tuple[str, int]], configs: dict[str, tuple[str, object]], steps: int, *,
             tokens: dict[int, float], flops: dict[int, float], conditioning: Callable[[str], object],
             to_images: Callable[[torch.Tensor], torch.Tensor] | None = None,
             score: Callable[[torch.Tensor, list[str]], dict] | None = None,
             progress: Callable[[str], None] | None = None) -> list[SchedulePoint]:
    """Run the static base and every ``configs[label] = (kind, ScheduleConfig)`` on every sample.

    ``to_images`` maps final latents to B x 3 x H x W images in [0, 1] (else latents are compared);
    ``score(images, prompts)`` adds figures such as class accuracy.
    """
    import time

    from ..pipelines.registry import generate
    from ..runtime.runner import schedule_config
    from .quality import psnr, ssim

    base = backend.base_patch
    conds = {prompt: conditioning(prompt) for prompt, _ in samples}
    prompts = [prompt for prompt, _ in samples]

    def run(config) -> tuple[torch.Tensor, list[list[int]], float]:
        outputs, schedules, started = [], [], time.perf_counter()
        for prompt, seed in samples:
            result = generate(backend, conds[prompt], config, steps=steps, seed=seed)
            outputs.append(result.latent.float().cpu())
            schedules.append(list(result.trace.schedule))
        seconds = (time.perf_counter() - started) / len(samples)
        latents = torch.cat(outputs)
        return (to_images(latents) if to_images else _fold_frames(latents)), schedules, seconds

    reference, base_schedules, base_seconds = run(schedule_config(backend, static_patch=base))
    span = 1.0 if to_images else float(reference.max() - reference.min()) or 1.0
    points = [SchedulePoint("static base", "base", base_schedules, scores=score(reference, prompts) if score else {},
                            seconds_per_image=base_seconds)]
    for label, (kind, config) in configs.items():
        images, schedules, seconds = run(config)
        point = SchedulePoint(
            label, kind, schedules,
            token_cost=sum(schedule_cost(s, tokens, base) for s in schedules) / len(schedules),
            flop_cost=sum(schedule_cost(s, flops, base) for s in schedules) / len(schedules),
            psnr=float(psnr(images, reference, data_range=span)), ssim=float(ssim(images, reference, data_range=span)),
            scores=score(images, prompts) if score else {}, seconds_per_image=seconds)
        for prompt in dict.fromkeys(prompts):
            mine = [schedule_cost(s, tokens, base) for s, q in zip(schedules, prompts) if q == prompt]
            point.cost_per_prompt[prompt] = sum(mine) / len(mine)
        points.append(point)
        if progress:
            progress(f"{label}: token cost {point.token_cost:.3f}, PSNR {point.psnr:.2f} dB")
    return points


def _fold_frames(latents: torch.Tensor) -> torch.Tensor:
    """Video latents B x C x F x h x w -> (B*F) x C x h x w, so the image metrics apply per frame."""
    return latents.permute(0, 2, 1, 3, 4).flatten(0, 1) if latents.dim() == 5 else latents


def mark_front(points: list[SchedulePoint], metric: str = "psnr") -> list[SchedulePoint]:
    """Mark the fixed front on ``metric`` and place every dynamic point against it (see the module docstring)."""
    if metric not in FRONT_METRICS:
        raise ValueError(f"unknown front metric {metric!r}: choose one of {', '.join(FRONT_METRICS)}")
    sign = FRONT_METRICS[metric][1]
    good = {id(p): p.goodness(metric) for p in points}
    fixed = [p for p in points if p.kind in ("fixed", "base")]
    for p in fixed:
        g = good[id(p)]
        p.front = not any(q is not p and q.token_cost <= p.token_cost and good[id(q)] >= g
                          and (q.token_cost < p.token_cost or good[id(q)] > g) for q in fixed)
    front = sorted((p for p in fixed if p.front), key=lambda p: p.token_cost)
    for p in points:
        p.front_metric = metric
        if p.kind != "dynamic":
            continue
        cheaper = [q for q in fixed if q.token_cost <= p.token_cost]
        beaten = any(good[id(q)] >= good[id(p)] for q in cheaper)
        at = front_at(front, p.token_cost, metric)
        p.front_at_cost = at
        p.above_front = not beaten and (at is None or sign * p.value(metric) > sign * at)
        if p.distinct_schedules == 1:
            only = p.schedules[0]
            p.same_as = next((q.label for q in points if q.kind != "dynamic" and q.schedules
                              and all(s == only for s in q.schedules)), None)
    return points


def front_at(front: list[SchedulePoint], cost: float, metric: str = "psnr") -> float | None:
    """The front's ``metric`` at ``cost``, linear between its neighbours (inf-PSNR base: the lower point's)."""
    below = [p for p in front if p.token_cost <= cost]
    above = [p for p in front if p.token_cost > cost]
    if not below:
        return None
    lo = below[-1]
    if not above or above[0].value(metric) in (float("inf"), float("-inf")):
        return lo.value(metric)
    hi = above[0]
    w = (cost - lo.token_cost) / (hi.token_cost - lo.token_cost)
    return lo.value(metric) + w * (hi.value(metric) - lo.value(metric))
