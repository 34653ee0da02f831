"""`ddit-export demo`: the whole story offline on the embedded demo model, in a few minutes on a CPU.

Exports the demo engines (ONNX, CPU; reused when unchanged), samples N images with the static base
and with DDiT on the same backend, and prints time per image, speed-up, the schedule histogram, PSNR
/ SSIM of DDiT against the base, class accuracy and Frechet distance of both. Writes a base-vs-DDiT
PNG grid, a schedule plot and, with --report, the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..demo.tuning import DEMO_RULE, DEMO_SIZES, DEMO_TAU  # the demo's tuned schedule
from ..util.atomic import check_writable, check_writable_file, write_text_atomic
from . import argtypes
from .arglists import add_cache_argument, add_schedule_arguments, patch_list, schedule_from_args
from .errors import run_guarded
from .export_cmd import RichReporter
from .progress import Counted

DEFAULT_STEPS = 28  # FluxPipeline's default; the adapters were distilled on 28-step trajectories
# 16 per class, a couple of minutes on a 2-core CPU; the documented figures are at --samples 480 (docs/quality.md):
# at 144 an accuracy's 95% interval is still about +-6 points, at 480 about +-3.
DEFAULT_SAMPLES = 144
GRID_SAMPLES = 48  # the PNG grid shows the first 48 pairs (every class), whatever N


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", "-n", type=argtypes.positive_int, default=DEFAULT_SAMPLES,
                   help=f"images per configuration, classes in turn (default {DEFAULT_SAMPLES})")
    p.add_argument("--steps", type=argtypes.steps,
                   help=f"denoising steps (default {DEFAULT_STEPS}, or the length of --schedule)")
    p.add_argument("--tau", type=argtypes.tau, help=f"DDiT threshold (default {DEMO_TAU:g})")
    p.add_argument("--sizes", type=patch_list, metavar="2,4,8",
                   help=f"patch sizes DDiT may pick, the base included (default {','.join(map(str, DEMO_SIZES))}; "
                        "the engines have 2,4,8)")
    p.add_argument("--settle-steps", type=argtypes.non_negative_int, metavar="N",
                   help="keep a newly chosen size N more steps (default: the rule's; see ddit-export generate)")
    add_schedule_arguments(p, "; default steps 28")
    p.add_argument("--seed", type=argtypes.seed, default=0,
                   help="noise seed of the first sample; sample i uses seed + i (default 0; e.g. 10000 for a "
                        "held-out set)")
    add_cache_argument(p)
    p.add_argument("--engines", help="engine folder (built or reused; default engines/demo, with --cache "
                                     "engines/demo-staged: the staged layout, which step caching needs; with "
                                     "--cache fbcache engines/demo-staged-split, also split after block 0)")
    p.add_argument("--out", default="outputs/demo", help="folder for the grid and plot (default outputs/demo)")
    p.add_argument("--report", metavar="FILE.json", help="also write the figures as JSON")
    p.add_argument("--force", action="store_true", help="rebuild the engines even if --engines holds others")


def run(args: argparse.Namespace) -> int:
    return run_guarded(lambda: demo_command(args, Console(highlight=False)))


def _check(args) -> None:
    from ..demo.engines import DEMO_PATCH_SIZES
    from ..pipelines.demo.classes import CLASS_NAMES
    from ..runtime.schedule_spec import check_schedule

    args.fixed = schedule_from_args(args, args.steps)
    if args.fixed:
        check_schedule(args.fixed, DEMO_PATCH_SIZES, None)
    if args.steps is None:
        args.steps = len(args.fixed) if args.fixed else DEFAULT_STEPS
    args.sizes = args.sizes or DEMO_SIZES
    args.tau = DEMO_TAU if args.tau is None else args.tau
    args.rule = args.rule or DEMO_RULE

    if DEMO_PATCH_SIZES[0] not in args.sizes or not set(args.sizes) <= set(DEMO_PATCH_SIZES):
        raise ValueError(f"--sizes must be some of the demo's engine sizes {','.join(map(str, DEMO_PATCH_SIZES))}, "
                         f"the base {DEMO_PATCH_SIZES[0]} included (got {','.join(map(str, args.sizes))})")

    if args.samples < len(CLASS_NAMES):
        raise ValueError(f"--samples must be at least {len(CLASS_NAMES)} (one per class; got {args.samples})")
    if args.steps < 4:
        raise ValueError(f"--steps must be at least 4: DDiT needs 3 warm-up steps (got {args.steps})")


def demo_command(args: argparse.Namespace, console: Console) -> int:
    from ..demo.classifier import load_classifier
    from ..demo.engines import export_demo_engines
    from ..demo.evaluate import figures, real_features, sample_labels, sample_runs, warm_up
    from ..demo.plots import write_grid, write_schedule_plot
    from ..runtime.backends import get_backend
    from ..runtime.runner import schedule_config

    _check(args)
    if args.cache is not None:  # static base, cache alone, DDiT alone, DDiT + cache, side by side
        from .demo_cache import cache_demo_command

        return cache_demo_command(args, console)
    args.engines = args.engines or "engines/demo"
    out = Path(args.out).expanduser()
    check_writable(out)
    if args.report:
        check_writable_file(Path(args.report).expanduser(), "--report")
    started = time.perf_counter()
    console.print("exporting the demo engines (ONNX, CPU; reused when unchanged)")
    reporter = RichReporter(console)
    try:
        manifest = export_demo_engines(Path(args.engines).expanduser(), force=args.force, reporter=reporter)
    finally:
        reporter.stop()
    export_seconds = time.perf_counter() - started
    sizes = manifest["patch_sizes"]
    console.print(f"engines: {args.engines} (sizes {sizes}, {export_seconds:.0f} s)")

    labels = sample_labels(args.samples)
    with get_backend("onnx", args.engines) as backend:
        ort_threading = {str(p): mode for p, mode in getattr(backend, "cpu_threading", {}).items()}
        warm_up(backend)
        what = f"schedule {args.schedule}" if args.fixed else f"DDiT {args.rule} tau {args.tau:g}"
        with Counted(console, args.samples, f"sampling base + {what}, {args.steps} steps", unit="sample") as bar:
            config = schedule_config(backend, tau=args.tau, settle_steps=args.settle_steps,
                                     patch_sizes=tuple(args.sizes), schedule=args.fixed, rule=args.rule)
            base, ddit = sample_runs(backend, args.samples, args.steps, args.seed, {"ddit": config},
                                     progress=bar.advance)
    ddit = ddit["ddit"]
    classifier = load_classifier()
    tokens = {int(e["patch_size"]): int(e["tokens"]) for e in manifest["engines"]}
    result = figures(base, ddit, labels, classifier, real_features(classifier), sizes, tokens)

    out.mkdir(parents=True, exist_ok=True)
    shown = min(GRID_SAMPLES, args.samples)
    grid = write_grid(base.images[:shown], ddit.images[:shown], labels[:shown], out / "samples_base_vs_ddit.png")
    plot = write_schedule_plot(ddit.schedules, labels, sizes, args.tau, out / "schedule.png")
    report = {
        "model": "demo", "backend": "onnx", "device": "cpu", "samples": args.samples, "grid_samples": shown,
        "seeds": [args.seed, args.seed + args.samples - 1], "steps": args.steps,
        "tau": None if args.fixed else args.tau, "rule": None if args.fixed else args.rule,
        "fixed_schedule": args.schedule, "rho": config.rho, "settle_steps": config.settle_steps,
        "seed": args.seed,
        "scheduler_sizes": sorted(args.sizes), "ort_cpu_threading": ort_threading,
        "export_seconds": export_seconds, "total_seconds": time.perf_counter() - started,
        "grid": str(grid), "schedule_plot": str(plot), **result,
    }
    _print_table(console, report, sizes)
    if args.report:
        path = Path(args.report).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(report, indent=1) + "\n")  # whole or not at all
        console.print(f"wrote {path}")
    console.print(f"wrote {grid} (left: static base, right: DDiT) and {plot}")
    return 0


def _print_table(console: Console, r: dict, sizes) -> None:
    from ..bench.bootstrap import RESAMPLES
    from ..demo.quality_figures import with_ci

    what = (f"schedule {r['fixed_schedule']}" if r["fixed_schedule"] else
            f"rule {r['rule']}, tau {r['tau']:g}, sizes {','.join(map(str, r['scheduler_sizes']))}")
    table = Table(title=f"demo: {r['samples']} samples per figure, {r['steps']} steps, ONNX Runtime CPU, {what}")
    table.add_column("figure")
    table.add_column("static base", justify="right")
    table.add_column("DDiT", justify="right")
    table.add_row("seconds / image", f"{r['seconds_per_image_base']:.3f}", f"{r['seconds_per_image_ddit']:.3f}")
    table.add_row("speed-up", "1.00x", with_ci(r["speedup"], r["speedup_ci"], ".2f", unit="x"), style="bold")
    table.add_row("token cost", "1.000", f"{r['token_cost']:.3f}")
    hist = r["schedule_histogram"]
    base_hist = {str(p): 0 for p in sizes} | {str(sizes[0]): r["samples"] * r["steps"]}
    table.add_row("steps at p" + "/".join(str(p) for p in sizes),
                  " / ".join(str(base_hist[str(p)]) for p in sizes), " / ".join(str(hist[str(p)]) for p in sizes))
    table.add_row("PSNR vs base (dB)", "inf", with_ci(r["psnr_db"], r["psnr_db_ci"]))
    table.add_row("SSIM vs base", "1.000", f"{r['ssim']:.3f}")
    table.add_row("class accuracy", with_ci(r["accuracy_base"], r["accuracy_base_ci"], ".1f", 100, "%"),
                  with_ci(r["accuracy_ddit"], r["accuracy_ddit_ci"], ".1f", 100, "%"))
    table.add_row("Frechet distance to real", with_ci(r["fd_base"], r["fd_base_ci"], ".1f"),
                  with_ci(r["fd_ddit"], r["fd_ddit_ci"], ".1f"))
    table.add_row("FD ratio DDiT / base", "1", with_ci(r["fd_ratio"], r["fd_ratio_ci"], ".3f"))
    table.add_row(f"FD between seed halves ({r['fd_halves_samples'][0]} vs {r['fd_halves_samples'][1]})",
                  with_ci(r["fd_noise_floor"], r["fd_noise_floor_ci"], ".1f") + " (noise floor)",
                  with_ci(r["fd_ddit_vs_base"], r["fd_ddit_vs_base_ci"], ".1f") + " (vs base)")
    table.add_row("distinct schedules", "1", str(r["distinct_schedules"]))
    if r["token_cost_textured"] is not None:
        table.add_row("token cost flat / textured", "1.000 / 1.000",
                      f"{r['token_cost_flat']:.3f} / {r['token_cost_textured']:.3f}")
    console.print(table)
    console.print(f"{r['samples']} samples behind every figure (seeds {r['seed']}-{r['seed'] + r['samples'] - 1}, "
                  f"classes in turn); [95% bootstrap intervals, {RESAMPLES} resamples]; FD against "
                  f"{r['fd_real_samples']} procedural real images; noise floor: FD of the base against itself on two "
                  "disjoint seed halves (median over 1000 class-balanced splits); docs/quality.md", markup=False)
    per_class = ", ".join(f"{name} {cost:.2f}" for name, cost in r["token_cost_per_class"].items())
    console.print(f"token cost per class: {per_class}", soft_wrap=False)
