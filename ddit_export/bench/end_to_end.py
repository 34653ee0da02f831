"""End to end: static base engine vs DDiT dynamic vs PyTorch eager base, same steps and seeds.

Every image goes through the runtime's public `generate` (the path of `ddit-export generate`), so
a family works here as soon as the runtime can sample it. The three modes are interleaved
(each seed's images in a rotated mode order, after one warm-up image per mode) so that all
speed-ups come from one run. Besides wall time, a schedule's cost is reported as its token sum
and FLOP sum over steps relative to the all-base schedule: noise-free speed-up estimates.
"""

from __future__ import annotations

from collections import Counter

import torch

from .timing import Stopwatch, rotated, summarize

MODES = ("static", "dynamic", "eager")


def schedule_cost(schedule: list[int], per_call: dict[int, float], base: int) -> float:
    """Cost of a schedule relative to running every step at the base size (1.0 = no saving)."""
    return sum(per_call[p] for p in schedule) / (len(schedule) * per_call[base])


def timed_generate(backend, conditioning, schedule, steps: int, seed: int, watch: Stopwatch, cache=None):
    """(seconds, GenerationResult) of one image on ``backend`` (with ``cache``, a StepCache, when given)."""
    from ..pipelines.registry import generate

    watch.start()
    result = generate(backend, conditioning, schedule, steps=steps, seed=seed, cache=cache)
    return watch.stop(), result


def _mode_configs(engine, eager, tau, rho, schedule=None, rule=None, cache=None) -> dict:
    """mode -> (backend, ScheduleConfig, StepCache or None). With ``cache`` (a CacheSpec) the paper's four
    configurations: static base, cache alone, DDiT alone ("dynamic") and DDiT + cache."""
    from ..runtime.runner import schedule_config

    static = schedule_config(engine, static_patch=engine.base_patch)
    dynamic = schedule_config(engine, tau=tau, rho=rho, schedule=schedule, rule=rule)
    configs = {"static": (engine, static, None)}
    if cache is not None:
        from ..runtime.cache import StepCache

        configs["cache"] = (engine, static, StepCache(engine, cache))
    configs["dynamic"] = (engine, dynamic, None)
    if cache is not None:
        configs["dynamic_cache"] = (engine, dynamic, StepCache(engine, cache))
    if eager is not None:
        configs["eager"] = (eager, schedule_config(eager, static_patch=eager.base_patch), None)
    return configs


def latent_quality(latent: torch.Tensor, ref: torch.Tensor) -> dict:
    """PSNR / SSIM of a final latent against the static base's, both mapped to [0, 1] by the base's range
    (the bench has no VAE: quality is measured in latent space; frames of a video latent count as images)."""
    from .quality import psnr, ssim

    ref = ref.float().cpu()
    lo, hi = ref.min(), ref.max()
    scale = (hi - lo).clamp_min(1e-12)

    def to_images(x):
        x = ((x.float().cpu() - lo) / scale).clamp(0, 1)
        if x.dim() == 5:  # B x C x F x H x W -> (B*F) x C x H x W
            x = x.transpose(1, 2).flatten(0, 1)
        return x

    x, r = to_images(latent), to_images(ref)
    return {"psnr_db": psnr(x, r), "ssim": ssim(x, r) if min(x.shape[-2:]) >= 7 else None}


def end_to_end(engine, eager, *, steps: int, seeds: list[int], repeats: int, tau=None, rho=None,
               prompt: str = "a photograph of a red fox in fresh snow", tokens: dict, flops: dict,
               schedule: tuple[int, ...] | None = None, rule: str | None = None, cache=None, progress=None) -> dict:
    """Time per image of each mode on ``engine`` (a Backend) and ``eager`` (the torch Backend or None).

    ``schedule`` replaces the dynamic rule by a fixed schedule (the "dynamic" mode then runs it).
    ``cache`` (a CacheSpec, staged folders) adds "cache" (static + cache) and "dynamic_cache" modes, and per
    mode the quality of its final latents against the static base's and its share of cached steps.
    ``progress(done, total)`` is called after every image (warm-up images included).
    """
    from ..pipelines.registry import make_conditioning

    if steps < 1 or repeats < 1 or not seeds:
        raise ValueError("end to end needs --steps >= 1, --e2e-repeats >= 1 and at least one seed")
    configs = _mode_configs(engine, eager, tau, rho, schedule, rule, cache)
    modes = list(configs)
    conditioning = make_conditioning(engine.manifest, prompt, device=engine.device)
    watch = Stopwatch(engine.device)
    total, done = len(modes) * (1 + repeats * len(seeds)), 0
    with torch.no_grad():
        for mode in modes:  # warm-up: first calls allocate, compile kernels, fill caches
            backend, config, step_cache = configs[mode]
            timed_generate(backend, conditioning, config, steps, seeds[0], watch, step_cache)
            done += 1
            if progress:
                progress(done, total)
        runs = {m: [] for m in modes}
        for r in range(repeats):
            for i, seed in enumerate(seeds):
                for mode in rotated(modes, r * len(seeds) + i):
                    backend, config, step_cache = configs[mode]
                    seconds, result = timed_generate(backend, conditioning, config, steps, seed, watch, step_cache)
                    runs[mode].append({**result.trace.totals(), "seed": seed, "wall_seconds": seconds,
                                       "schedule": result.trace.schedule, "cached": result.trace.cached,
                                       "latent": result.latent.detach().float().cpu() if cache else None})
                    done += 1
                    if progress:
                        progress(done, total)
    base = engine.base_patch
    report = {"backend": engine.name, "eager_backend": eager.name if eager else None, "steps": steps,
              "seeds": list(seeds), "repeats": repeats, "tau": configs["dynamic"][1].tau,
              "rho": configs["dynamic"][1].rho, "conditioning": conditioning.source,
              "fixed_schedule": list(schedule) if schedule else None, "rule": None if schedule else rule,
              "modes": {m: _mode_summary(runs[m], steps) for m in modes}}
    dyn = report["modes"]["dynamic"]
    dyn["schedules"] = {str(run["seed"]): run["schedule"] for run in runs["dynamic"]}
    token_ratio = sum(schedule_cost(s, tokens, base) for s in dyn["schedules"].values()) / len(seeds)
    flop_ratio = sum(schedule_cost(s, flops, base) for s in dyn["schedules"].values()) / len(seeds)
    mean = {m: report["modes"][m]["seconds_per_image"] for m in modes}
    # Both modes ran every step on the same engines: their time ratio is only noise, not a DDiT speed-up.
    report["identical_schedules"] = all(r["schedule"] == runs["static"][0]["schedule"] for r in runs["dynamic"])
    report["speedups"] = {
        "dynamic_vs_static": None if report["identical_schedules"] else mean["static"] / mean["dynamic"],
        "dynamic_vs_eager": mean["eager"] / mean["dynamic"] if eager else None,
        "static_vs_eager": mean["eager"] / mean["static"] if eager else None,
    }
    report["cost"] = {"token_ratio": token_ratio, "token_speedup": 1 / token_ratio,
                      "flop_ratio": flop_ratio, "flop_speedup": 1 / flop_ratio}
    static_ms = report["modes"]["static"]["scheduler_ms_per_step"]
    report["scheduler_overhead"] = {
        "ms_per_step": dyn["scheduler_ms_per_step"],
        "share_of_step": dyn["scheduler_share"],
        # what deciding costs beyond a static run's (trivial) decision
        "extra_ms_per_step_vs_static": dyn["scheduler_ms_per_step"] - static_ms,
    }
    if cache is not None:
        report["cache"] = configs["cache"][2].describe()
        _cache_figures(report, runs, tokens, base)
    return report


def _cache_figures(report: dict, runs: dict, tokens: dict, base: int) -> None:
    """The four-way table's figures: per mode speed-up vs the static base, share of steps cached, token cost
    and latent PSNR / SSIM against the static base's image of the same seed and repeat; DDiT + cache vs
    DDiT alone."""
    static = {(i, r["seed"]): r["latent"] for i, r in enumerate(runs["static"])}
    t_static = report["modes"]["static"]["seconds_per_image"]
    table = {}
    for mode in ("static", "cache", "dynamic", "dynamic_cache"):
        mode_runs = runs[mode]
        latents = torch.cat([r["latent"] for r in mode_runs])
        refs = torch.cat([static[i, r["seed"]] for i, r in enumerate(mode_runs)])
        flat = [c for r in mode_runs for c in r["cached"]]
        quality = latent_quality(latents, refs) if mode != "static" else {"psnr_db": None, "ssim": None}
        t = report["modes"][mode]["seconds_per_image"]
        table[mode] = {"seconds_per_image": t, "speedup_vs_static": t_static / t,
                       "cached_steps": sum(flat) / len(flat) if flat else 0.0,
                       "token_cost": sum(schedule_cost(r["schedule"], tokens, base) for r in mode_runs)
                       / len(mode_runs),
                       **quality}
        report["modes"][mode]["cached"] = {str(r["seed"]): r["cached"] for r in mode_runs}
    report["cache_table"] = table
    report["speedups"]["cache_vs_static"] = table["cache"]["speedup_vs_static"]
    report["speedups"]["dynamic_cache_vs_static"] = table["dynamic_cache"]["speedup_vs_static"]
    report["speedups"]["dynamic_cache_vs_dynamic"] = (report["modes"]["dynamic"]["seconds_per_image"]
                                                      / table["dynamic_cache"]["seconds_per_image"])


def _mode_summary(runs: list[dict], steps: int) -> dict:
    scheduler = sum(r["scheduler_seconds"] for r in runs)
    engine = sum(r["engine_seconds"] for r in runs)
    traced = sum(r["seconds"] for r in runs) or 1.0  # the trace's: step 0's decision to the last update
    counts = Counter(p for r in runs for p in r["schedule"])
    stats = summarize([r["wall_seconds"] for r in runs])
    return {
        **stats,
        "seconds_per_image": stats["mean_ms"] / 1e3,
        "scheduler_ms_per_step": 1e3 * scheduler / (steps * len(runs)),
        "engine_ms_per_step": 1e3 * engine / (steps * len(runs)),
        "scheduler_share": scheduler / traced,
        "steps_per_patch": {str(p): n / len(runs) for p, n in sorted(counts.items())},
        "images": len(runs),
    }
