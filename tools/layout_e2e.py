"""End-to-end DDiT time per image, single vs staged layout, interleaved in one process.

    python tools/layout_e2e.py --single S --staged T --steps 12 --repeats 2 --tau 10

Both layouts sample the same seeds through the runtime's `generate` with the same scheduler
settings (a large tau makes every step after the warm-up coarse, so the run covers both sizes), in
alternating order after one warm-up image each; prints seconds per image and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch


def main() -> None:
    from ddit_export.bench.end_to_end import timed_generate
    from ddit_export.bench.timing import Stopwatch
    from ddit_export.pipelines.registry import make_conditioning
    from ddit_export.runtime.backends import get_backend
    from ddit_export.runtime.runner import schedule_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--single", required=True)
    ap.add_argument("--staged", required=True)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tau", type=float, default=10.0)
    args = ap.parse_args()
    backends = {"single": get_backend("onnx", args.single, cpu_threading="pool"),
                "staged": get_backend("onnx", args.staged)}
    conditioning = make_conditioning(backends["single"].manifest, "a red fox", device=torch.device("cpu"))
    watch, seconds, schedules = Stopwatch(torch.device("cpu")), {k: [] for k in backends}, {}
    with torch.no_grad():
        for r in range(args.repeats + 1):
            for name in (list(backends) if r % 2 else list(reversed(backends))):
                config = schedule_config(backends[name], tau=args.tau)
                took, result = timed_generate(backends[name], conditioning, config, args.steps, 0, watch)
                if r:
                    seconds[name].append(took)
                schedules[name] = "".join(str(p) for p in result.trace.schedule)
    s = {k: statistics.median(v) for k, v in seconds.items()}
    print(json.dumps({"steps": args.steps, "tau": args.tau, "schedule": schedules,
                      "single_s": round(s["single"], 3), "staged_s": round(s["staged"], 3),
                      "staged_over_single": round(s["staged"] / s["single"], 3)}))


if __name__ == "__main__":
    main()
