"""`ddit-export demo --cache KIND:T`: the paper's table on the demo, four configurations in one run.

Static base, cache alone (every step at the base size), DDiT alone and DDiT + cache, all on the demo's
STAGED engines (`engines/demo-staged`, ONNX Runtime CPU), sample by sample interleaved. TeaCache needs
the demo model's own polynomial: when the staged folder's manifest has none, it is fitted first on
seeds disjoint from the evaluated ones (`ddit-export calibrate --cache`'s recipe) and stored.
The report's top-level figures are DDiT + cache's (`speedup` over the base, `speedup_vs_ddit`,
`cached_steps`, `psnr_db`, `accuracy_ddit`), beside `accuracy_base`; `configurations` holds all four.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.table import Table

from ..util.atomic import check_writable, check_writable_file, write_text_atomic
from .progress import Counted

FIT_SEEDS = (5000, 5001)  # never sampled by the demo's evaluation (its seeds start at --seed, default 0)
FIT_STEPS = 28


def _fit_if_missing(folder: Path, manifest: dict, console) -> dict:
    from ..artifacts.manifest import read_manifest
    from ..bench.cache_fit import collect_pairs, fit_polynomial, store_cache_fit
    from ..pipelines.demo.class_table import demo_conditioning
    from ..pipelines.demo.classes import CLASS_NAMES
    from ..runtime.backends import get_backend

    if manifest.get("cache", {}).get("teacache", {}).get("coefficients"):
        return manifest
    console.print(f"fitting TeaCache's polynomial on the demo model (seeds {FIT_SEEDS}, {FIT_STEPS} steps; "
                  "as `ddit-export calibrate --cache`)")
    with get_backend("onnx", folder) as backend:
        conds = [demo_conditioning(name) for name in CLASS_NAMES]
        pairs = collect_pairs(backend, conds, list(FIT_SEEDS), FIT_STEPS)
    fit = fit_polynomial(pairs)
    store_cache_fit(folder, manifest, {**fit, "signal": "block 0 norm1(tokens, temb)", "steps": FIT_STEPS,
                                       "seeds": list(FIT_SEEDS), "prompts": list(CLASS_NAMES), "backend": "onnx"})
    console.print(f"stored: {', '.join(f'{c:.5g}' for c in fit['coefficients'])} (R^2 {fit['r2']:.3f}, "
                  f"{fit['pairs']} step pairs)")
    return read_manifest(folder)


def cache_demo_command(args, console) -> int:
    from ..demo.classifier import load_classifier
    from ..demo.engines import DEFAULT_STAGED_DIR, export_demo_engines
    from ..demo.evaluate import figures, real_features, sample_labels, sample_runs, warm_up
    from ..demo.plots import write_grid, write_schedule_plot
    from ..runtime.backends import get_backend
    from ..runtime.cache import StepCache
    from ..runtime.runner import schedule_config
    from .export_cmd import RichReporter

    split = args.cache.kind == "fbcache"  # first-block caching on ONNX Runtime needs the trunk split after block 0
    default = DEFAULT_STAGED_DIR.with_name(DEFAULT_STAGED_DIR.name + "-split") if split else DEFAULT_STAGED_DIR
    folder = Path(args.engines or default).expanduser()
    out = Path(args.out).expanduser()
    check_writable(out)
    if args.report:
        check_writable_file(Path(args.report).expanduser(), "--report")
    started = time.perf_counter()
    console.print(f"exporting the demo engines (ONNX, CPU, --layout staged{' --first-block-split' if split else ''}; "
                  "reused when unchanged)")
    reporter = RichReporter(console)
    try:
        manifest = export_demo_engines(folder, force=args.force, reporter=reporter, layout="staged",
                                       first_block_split=split)
    finally:
        reporter.stop()
    if args.cache.kind == "teacache":
        manifest = _fit_if_missing(folder, manifest, console)
    export_seconds = time.perf_counter() - started
    sizes = manifest["patch_sizes"]

    labels = sample_labels(args.samples)
    with get_backend("onnx", folder) as backend:
        cache = StepCache(backend, args.cache)  # refuses what the backend cannot run, with the fix
        warm_up(backend)
        ddit = schedule_config(backend, tau=args.tau, settle_steps=args.settle_steps, patch_sizes=tuple(args.sizes),
                               schedule=args.fixed, rule=args.rule)
        static = schedule_config(backend, static_patch=backend.base_patch)
        configs = {"cache": (static, cache), "ddit": ddit, "ddit_cache": (ddit, cache)}
        what = f"schedule {args.schedule}" if args.fixed else f"DDiT {args.rule} tau {args.tau:g}"
        with Counted(console, args.samples, f"sampling base, {args.cache}, {what}, both; {args.steps} steps",
                     unit="sample") as bar:
            base, runs = sample_runs(backend, args.samples, args.steps, args.seed, configs, progress=bar.advance)
    classifier = load_classifier()
    real = real_features(classifier)
    tokens = {int(e["patch_size"]): int(e["tokens"]) for e in manifest["engines"]}
    rows = {key: figures(base, run, labels, classifier, real, sizes, tokens) for key, run in runs.items()}
    for key, run in runs.items():
        rows[key]["cached_steps"] = run.cached_share
    both, alone = rows["ddit_cache"], rows["ddit"]

    out.mkdir(parents=True, exist_ok=True)
    grid = write_grid(base.images, runs["ddit_cache"].images, labels, out / "samples_base_vs_ddit_cache.png")
    plot = write_schedule_plot(runs["ddit_cache"].schedules, labels, sizes, args.tau, out / "schedule_cache.png",
                               cached=runs["ddit_cache"].cached)
    report = {
        "model": "demo", "backend": "onnx", "device": "cpu", "layout": "staged", "engines": str(folder),
        "samples": args.samples, "steps": args.steps, "seed": args.seed, "cache": cache.describe(),
        "tau": None if args.fixed else args.tau, "rule": None if args.fixed else args.rule,
        "fixed_schedule": args.schedule, "scheduler_sizes": sorted(args.sizes),
        "speedup": both["speedup"], "speedup_vs_ddit": alone["seconds_per_image_ddit"] / both["seconds_per_image_ddit"],
        "cached_steps": both["cached_steps"], "psnr_db": both["psnr_db"], "ssim": both["ssim"],
        "accuracy_base": both["accuracy_base"], "accuracy_ddit": both["accuracy_ddit"],
        "accuracy_ddit_alone": alone["accuracy_ddit"], "seconds_per_image_base": both["seconds_per_image_base"],
        "export_seconds": export_seconds, "total_seconds": time.perf_counter() - started,
        "grid": str(grid), "schedule_plot": str(plot),
        "configurations": {key: {k: v for k, v in r.items() if k not in ("schedules", "psnr_db_per_sample")}
                           | {"schedules": r["schedules"], "cached": runs[key].cached} for key, r in rows.items()},
    }
    _print_table(console, report, args.cache)
    if args.report:
        path = Path(args.report).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(report, indent=1) + "\n")  # whole or not at all
        console.print(f"wrote {path}")
    console.print(f"wrote {grid} (left: static base, right: DDiT + cache) and {plot}")
    return 0


def _print_table(console, r: dict, spec) -> None:
    from ..demo.quality_figures import with_ci

    rows = r["configurations"]
    first = next(iter(rows.values()))
    table = Table(title=f"demo: {r['samples']} samples per figure, {r['steps']} steps, ONNX Runtime CPU, staged "
                        f"engines, {spec}, rule {r['rule']} tau {r['tau']}")
    table.add_column("figure")
    for name in ("static base", f"{spec.kind} alone", "DDiT alone", f"DDiT + {spec.kind}"):
        table.add_column(name, justify="right")
    cols = [rows["cache"], rows["ddit"], rows["ddit_cache"]]
    table.add_row("seconds / image", f"{first['seconds_per_image_base']:.4f}",
                  *[f"{c['seconds_per_image_ddit']:.4f}" for c in cols])
    table.add_row("speed-up vs base", "1.00x", *[f"{c['speedup']:.2f}x" for c in cols], style="bold")
    table.add_row("steps cached", "0%", *[f"{100 * c['cached_steps']:.0f}%" for c in cols])
    table.add_row("PSNR vs base (dB)", "inf", *[with_ci(c["psnr_db"], c["psnr_db_ci"]) for c in cols])
    table.add_row("SSIM vs base", "1.000", *[f"{c['ssim']:.3f}" for c in cols])
    table.add_row("class accuracy", with_ci(first["accuracy_base"], first["accuracy_base_ci"], ".1f", 100, "%"),
                  *[with_ci(c["accuracy_ddit"], c["accuracy_ddit_ci"], ".1f", 100, "%") for c in cols])
    table.add_row("Frechet distance", with_ci(first["fd_base"], first["fd_base_ci"], ".1f"),
                  *[with_ci(c["fd_ddit"], c["fd_ddit_ci"], ".1f") for c in cols])
    console.print(table)
    console.print(f"{r['samples']} samples behind every figure; [95% bootstrap intervals]", markup=False)
    console.print(f"DDiT + {spec.kind} vs DDiT alone: {r['speedup_vs_ddit']:.2f}x")
