"""Calibrate the scheduler: sweep (tau, rho), measure speed-up and quality against the static base,
pick the fastest point inside a quality budget, store it as the engine folder's default.

Per grid point and sample (prompt x seed) one DDiT image is made with the runtime's public
`generate` and compared with the static-base image of the same sample:
  quality    psnr / ssim of the final latent (data range: the reference latent's max - min; video
             frames are folded into the batch), and of decoded images (range 1) when the model
             has a decoder (a FLUX pipeline folder's VAE, the demo's pixel codec). Averaged over
             samples; `<metric>_min` is the worst sample.
  speed-up   token_speedup / flop_speedup: the schedule's token (FLOP) sum over steps against the
             all-base schedule, noise-free; wall_speedup: mean static time / mean dynamic time on
             the same backend, one run (static images are re-timed between grid points, so drift
             hits both).
The pick maximises the chosen speed-up among points whose mean quality meets the budget
(ties: better quality, then the smaller tau).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..artifacts.manifest import update_scheduler
from .end_to_end import schedule_cost, timed_generate
from .latency import bench_inputs
from .timing import Stopwatch

METRICS = ("psnr", "ssim", "image_psnr", "image_ssim")
SPEEDS = ("token_speedup", "flop_speedup", "wall_speedup")


def log_grid(lo: float, hi: float, points: int) -> list[float]:
    """``points`` values from lo to hi evenly spaced in log (lo > 0)."""
    if not (0 < lo <= hi) or points < 1:
        raise ValueError(f"tau grid needs 0 < --tau-min <= --tau-max and --tau-points >= 1 (got {lo}, {hi}, {points})")
    if points == 1:
        return [float(lo)]
    return [float(v) for v in np.geomspace(lo, hi, points)]


def mark_pareto(points: list[dict], speed: str, metric: str) -> list[dict]:
    """Set ``pareto``: no other point is at least as fast and as good, and strictly better in one."""
    for p in points:
        p["pareto"] = not any(
            q[speed] >= p[speed] and q[metric] >= p[metric] and (q[speed] > p[speed] or q[metric] > p[metric])
            for q in points
        )
    return points


def pick_point(points: list[dict], metric: str, budget: float, speed: str) -> dict | None:
    """The fastest point whose ``metric`` meets ``budget``; None if none does."""
    inside = [p for p in points if p[metric] is not None and p[metric] >= budget]
    if not inside:
        return None
    return max(inside, key=lambda p: (p[speed], p[metric], -p["tau"]))


@dataclass
class Sample:
    prompt: str
    seed: int


def _as_images(latent: torch.Tensor) -> torch.Tensor:
    """B x C x h x w as is; video B x C x F x h x w -> (B*F) x C x h x w."""
    x = latent.float().cpu()
    return x.permute(0, 2, 1, 3, 4).flatten(0, 1) if x.dim() == 5 else x


def latent_quality(x: torch.Tensor, ref: torch.Tensor) -> dict:
    from .quality import psnr, ssim

    a, b = _as_images(x), _as_images(ref)
    span = float(b.max() - b.min()) or 1.0
    return {"psnr": float(psnr(a, b, data_range=span)), "ssim": float(ssim(a, b, data_range=span))}


def image_quality(images: torch.Tensor, refs: torch.Tensor) -> dict:
    """Metrics of decoded images (B x 3 x H x W in [0, 1])."""
    from .quality import psnr, ssim

    a, b = images.float().cpu(), refs.float().cpu()
    return {"image_psnr": float(psnr(a, b, data_range=1.0)), "image_ssim": float(ssim(a, b, data_range=1.0))}


def image_decoder(manifest: dict, device):
    """``latent -> B x 3 x H x W`` images in [0, 1] when the engines' model has a decoder, else None.

    FLUX pipeline folders decode with their VAE; the demo model with its exact pixel codec (`Pipeline.image_decoder`).
    """
    from ..pipelines.registry import pipeline_for

    return pipeline_for(manifest).image_decoder(manifest, device)


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


def sweep(backend, samples: list[Sample], taus: list[float], rhos: list[float], steps: int, *,
          decode=None, tokens: dict, flops: dict, progress=None) -> tuple[list[dict], dict]:
    """Every (tau, rho) point's speed-ups and quality; also the static reference's timing.

    ``decode(latent) -> images`` (see `image_decoder`) adds image metrics when given.
    """
    from ..pipelines.registry import make_conditioning
    from ..runtime.runner import schedule_config

    base = backend.base_patch
    watch = Stopwatch(backend.device)
    static = schedule_config(backend, static_patch=base)
    conds = {s.prompt: make_conditioning(backend.manifest, s.prompt, device=backend.device) for s in samples}
    run = lambda sample, config: timed_generate(  # noqa: E731
        backend, conds[sample.prompt], config, steps, sample.seed, watch)
    with torch.no_grad():
        run(samples[0], static)  # warm-up: first calls allocate and fill caches, for every engine
        latent, cond = bench_inputs(backend)
        for patch in backend.patch_sizes:
            backend(patch, latent, **cond)
        refs, static_seconds = [], []
        for sample in samples:
            seconds, result = run(sample, static)
            refs.append((result.latent.clone(), decode(result.latent) if decode else None))
            static_seconds.append(seconds)
        points = []
        for k, (tau, rho) in enumerate((t, r) for r in rhos for t in taus):
            config = schedule_config(backend, tau=tau, rho=rho)
            static_seconds.append(run(samples[k % len(samples)], static)[0])  # interleaved re-timing
            per_sample = []
            for sample, (ref, ref_images) in zip(samples, refs):
                seconds, result = run(sample, config)
                schedule = result.trace.schedule
                quality = latent_quality(result.latent, ref)
                if decode:
                    quality |= image_quality(decode(result.latent), ref_images)
                per_sample.append({"seconds": seconds, "schedule": schedule, **quality})
            points.append(_point(tau, rho, per_sample, tokens, flops, base))
            if progress:
                progress(points[-1], k + 1, len(taus) * len(rhos))
    static_mean = _mean(static_seconds)
    for p in points:
        p["wall_speedup"] = static_mean / p["seconds_per_image"]
    return points, {"seconds_per_image": static_mean, "images": len(static_seconds)}


def _point(tau, rho, per_sample: list[dict], tokens, flops, base) -> dict:
    point = {"tau": tau, "rho": rho,
             "token_speedup": 1 / _mean([schedule_cost(s["schedule"], tokens, base) for s in per_sample]),
             "flop_speedup": 1 / _mean([schedule_cost(s["schedule"], flops, base) for s in per_sample]),
             "seconds_per_image": _mean([s["seconds"] for s in per_sample]),
             "schedules": [s["schedule"] for s in per_sample]}
    for metric in METRICS:
        if metric in per_sample[0]:
            values = [s[metric] for s in per_sample]
            point[metric] = _mean(values)  # inf when every sample is identical to the reference
            point[f"{metric}_min"] = min(values)
    return point


def json_safe(value):
    """Infinite PSNR (identical to the reference) -> the string "inf": strict JSON has no Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def store_calibration(folder, expected: dict, tau: float, rho: float, calibration: dict) -> Path:
    """Set the manifest's scheduler defaults (artifacts/manifest.py writes it, atomically).

    Refuses when the manifest changed since ``expected`` was read (a re-export meanwhile).
    """
    changes = {"tau": float(tau), "rho": float(rho), "calibration": json_safe(calibration)}
    return update_scheduler(folder, expected, changes, doing="calibrating")


def calibration_record(chosen: dict, points: list[dict], *, metric, budget, speed, taus, rhos, samples,
                       steps, backend_name, device, static: dict) -> dict:
    """What the manifest keeps about a calibration (the grid, the budget, the chosen point, the date)."""
    compact = [{k: v for k, v in p.items() if k != "schedules"} for p in points]
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backend": backend_name, "device": str(device), "steps": steps,
        "samples": [{"prompt": s.prompt, "seed": s.seed} for s in samples],
        "grid": {"tau": list(taus), "rho": list(rhos)},
        "budget": {"metric": metric, "min": budget, "over": "mean of samples"}, "speed": speed,
        "chosen": {k: v for k, v in chosen.items() if k != "schedules"}, "static": static, "points": compact,
    }


def pareto_markdown(points: list[dict], metric: str, speed: str, chosen: dict | None) -> str:
    cols = ["tau", "rho", "token_speedup", "flop_speedup", "wall_speedup", *(m for m in METRICS if m in points[0])]
    lines = ["| " + " | ".join([*cols, "pareto", "chosen"]) + " |", "|" + "---:|" * (len(cols) + 2)]
    for p in sorted(points, key=lambda q: -q[speed]):
        cells = [f"{p['tau']:.3g}", f"{p['rho']:g}", *(f"{p[c]:.3f}" for c in cols[2:])]
        lines.append("| " + " | ".join([*cells, "yes" if p["pareto"] else "", "**<-**" if p is chosen else ""]) + " |")
    return "\n".join(lines) + "\n"

