"""Per-engine latency of an engine folder, every size and backend timed side by side.

After warm-up, each round calls every (backend, patch size) engine once, the round's order
rotated by one each time: machine drift and thermal state hit every engine alike, so the ratios
between sizes and backends come from one run and are fair. Calls go through the runtime's
`Backend.__call__` (the path `generate` takes), with inputs made once before timing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..artifacts.manifest import read_manifest
from ..families.registry import family_by_name
from .flops import flops_table
from .timing import Stopwatch, rotated, summarize


def manifest_backends(manifest: dict) -> list[str]:
    """Backends the folder has engines for, in the manifest's order."""
    return list(dict.fromkeys(e["backend"] for e in manifest["engines"]))


def bench_inputs(backend, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Seeded inputs of the engines' static shapes, on the backend's device.

    Values as a pipeline passes them (a mid-schedule timestep, guidance 3.5), so no engine takes
    a degenerate fast path; the timings do not depend on them otherwise.
    """
    gen = torch.Generator().manual_seed(seed)
    family = family_by_name(backend.manifest["family"])
    tensors = {}
    for spec in backend.io_spec.inputs:
        if spec.name == "timestep":
            value = torch.full(spec.shape, 0.5 * family.timestep_scale)
        elif spec.name == "guidance":
            value = torch.full(spec.shape, 3.5)
        else:
            value = torch.randn(spec.shape, generator=gen)
        tensors[spec.name] = value.to(backend.device)  # the backend casts to the spec dtype
    latent = tensors.pop("latent").to(backend.dtype)
    return latent, tensors


def time_engines(backends: dict, warmup: int, iters: int, device, progress=None) -> dict[tuple[str, int], list[float]]:
    """Round-robin timing of every engine of ``backends`` (name -> Backend); seconds per call.

    ``progress(done, total)`` is called after every round (warm-up rounds included)."""
    if iters < 1 or warmup < 0:
        raise ValueError(f"--iters must be >= 1 and --warmup >= 0 (got {iters}, {warmup})")
    inputs = {name: bench_inputs(b) for name, b in backends.items()}
    engines = [(name, p) for name, b in backends.items() for p in b.patch_sizes]
    watch = Stopwatch(device)
    with torch.no_grad():
        for r in range(warmup):
            for name, patch in engines:
                latent, cond = inputs[name]
                backends[name](patch, latent, **cond)
            if progress:
                progress(r + 1, warmup + iters)
        samples = {key: [] for key in engines}
        for r in range(iters):
            for name, patch in rotated(engines, r):
                latent, cond = inputs[name]
                watch.start()
                backends[name](patch, latent, **cond)
                samples[(name, patch)].append(watch.stop())
            if progress:
                progress(warmup + r + 1, warmup + iters)
    return samples


def engine_rows(manifest: dict, samples: dict[tuple[str, int], list[float]]) -> list[dict]:
    """One row per engine: latency summary, tokens, FLOPs per call, achieved FLOP/s, speed-up vs base."""
    tokens = {int(e["patch_size"]): int(e["tokens"]) for e in manifest["engines"]}
    flops = flops_table(manifest)
    base = int(manifest["base_patch"])
    rows = []
    for (name, patch), seconds in samples.items():
        stats = summarize(seconds)
        rows.append({"backend": name, "patch_size": patch, "tokens": tokens[patch], "flops": flops[patch],
                     **stats, "flops_per_s": flops[patch] / (stats["mean_ms"] / 1e3)})
    for row in rows:
        ref = next((r for r in rows if r["backend"] == row["backend"] and r["patch_size"] == base), None)
        row["speedup_vs_base"] = ref["mean_ms"] / row["mean_ms"] if ref else None
    return rows


def engine_latency(folder, backends: dict, warmup: int = 10, iters: int = 50, device="cpu",
                   progress=None) -> list[dict]:
    """Rows of `engine_rows` for already-loaded ``backends`` of ``folder``."""
    manifest = read_manifest(Path(folder))
    return engine_rows(manifest, time_engines(backends, warmup, iters, device, progress))
