"""What lock-step batching can buy on this machine, before anyone deploys: B requests one by one, then together.

    python tools/batching_ceiling.py engines/demo --batch 8 --rounds 5 --json ceiling.json

Two sets of B requests run through `BatchedRunner` without Ray or HTTP, alternately one at a time and in
lock-step, round after round (side by side in one process, so machine load hits both alike):
- `identical`: one prompt and one seed repeated B times. Every request picks the same size at every
  step, so every engine call is full: the most batching can save here (its ceiling).
- `distinct`: prompts in turn and seeds s..s+B-1, as a load test sends them; requests choose their own
  sizes, so groups are smaller.
Serving adds per-request work batching does not share (HTTP, encoding), so a deployment's
`--max-batch B` vs `--max-batch 1` throughput ratio stays below these (docs/serving.md). Every lock-step
result is checked against its solo run: same schedule, bitwise-equal latent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from .load_test import DEFAULT_PROMPTS  # the load test's requests: the demo's classes in turn


def compare(runner, jobs: Sequence, rounds: int) -> dict:
    """Per-request time of `jobs` run one by one and in lock-step, `rounds` alternating rounds after a warm one."""
    from .batched_runner import JobResult

    def one_by_one() -> list[JobResult]:
        return [runner.run([job])[0] for job in jobs]

    solo, together = one_by_one(), runner.run(jobs)  # warm: first calls allocate
    for result in (*solo, *together):
        if isinstance(result, Exception):
            raise result
    equal = all(a.trace.schedule == b.trace.schedule and torch.equal(a.latent, b.latent)
                for a, b in zip(solo, together))
    solo_s, lock_s = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        one_by_one()
        solo_s.append((time.perf_counter() - start) / len(jobs))
        start = time.perf_counter()
        runner.run(jobs)
        lock_s.append((time.perf_counter() - start) / len(jobs))
    ratios = [s / lk for s, lk in zip(solo_s, lock_s)]
    shared = [n for r in together for n in r.batch_sizes]
    return {
        "requests": len(jobs), "rounds": rounds,
        "solo_ms_per_request": round(1000 * statistics.median(solo_s), 3),
        "lock_step_ms_per_request": round(1000 * statistics.median(lock_s), 3),
        "ratio_median": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios],
        "requests_per_engine_call": round(sum(shared) / len(shared), 3),
        "schedules": sorted({",".join(map(str, r.trace.schedule)) for r in together}),
        "equal_to_solo": equal,
    }


def measure(runner, batch: int, steps: int, rounds: int, seed: int = 0,
            prompts: Sequence[str] = DEFAULT_PROMPTS) -> dict:
    """Both request sets on `runner` (a `BatchedRunner` with batch-`batch` engines loaded)."""
    from ..pipelines import make_conditioning
    from ..runtime.runner import schedule_config
    from .batched_runner import Job

    config = schedule_config(runner.solo)
    conds = {p: make_conditioning(runner.solo.manifest, p) for p in prompts}
    identical = [Job(conds[prompts[0]], config, steps=steps, seed=seed) for _ in range(batch)]
    distinct = [Job(conds[prompts[i % len(prompts)]], config, steps=steps, seed=seed + i) for i in range(batch)]
    return {
        "engines": str(runner.solo.folder), "backend": runner.solo.name, "batch": batch, "steps": steps,
        "ort_cpu_threading": runner.cpu_threading(), "call_ms": runner.call_ms(),
        "identical": compare(runner, identical, rounds),
        "distinct": compare(runner, distinct, rounds),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="batching_ceiling", description=__doc__.splitlines()[0])
    p.add_argument("engines", help="a batch-1 engine folder (its batch-B variant is exported beside it, or reused)")
    p.add_argument("--batch", type=int, default=8, help="requests per lock-step set, as serve's --max-batch (8)")
    p.add_argument("--backend", default="onnx", help="engine runtime (default onnx)")
    p.add_argument("--cpu-threading", choices=("auto", "pool", "pool+spin", "single"), default="auto",
                   help="ONNX Runtime CPU threading of the onnx backend (default auto; a serve replica with one "
                        "CPU uses single)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--rounds", type=int, default=5, help="alternating timed rounds (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    for name in ("batch", "steps", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.batch < 2:
        p.error("--batch must be at least 2: batch 1 is the solo run itself")
    from ..runtime.backends import get_backend
    from .batch_engines import batch_variant
    from .batched_runner import BatchedRunner

    try:
        batched = batch_variant(args.engines, args.batch, args.backend)
        options = {"cpu_threading": args.cpu_threading} if args.backend == "onnx" else {}
        runner = BatchedRunner([get_backend(args.backend, folder, **options) for folder in (args.engines, batched)])
    except (ValueError, OSError) as err:  # a missing or damaged folder, a backend that cannot run here
        print(f"batching_ceiling: error: {err}", file=sys.stderr)
        return 2
    runner.calibrate()
    report = measure(runner, args.batch, args.steps, args.rounds, args.seed)
    text = json.dumps(report, indent=1)
    print(text)
    for name in ("identical", "distinct"):
        r = report[name]
        print(f"{name:9s}: one by one {r['solo_ms_per_request']:.1f} ms/request, lock-step "
              f"{r['lock_step_ms_per_request']:.1f} ms/request: {r['ratio_median']:.2f}x "
              f"({r['requests_per_engine_call']:.2f} requests per engine call, equal to solo: {r['equal_to_solo']})")
    if args.json:
        from ..util.atomic import write_text_atomic

        write_text_atomic(args.json, text + "\n")
    return 0 if report["identical"]["equal_to_solo"] and report["distinct"]["equal_to_solo"] else 1
