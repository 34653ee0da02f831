"""The dynamic rule and every fixed schedule of equal or higher token cost, on N demo samples, with intervals.

    python tools/demo_quality_eval.py [ENGINE_DIR] [--samples 480] [--seed 10000] [--steps 28]
        [--rule RULE] [--tau TAU] [--sizes 2,4,8] [--fixed SPEC ...] [--cost-band 0.05] [--base-every 16]
        [--json FILE] [--scores FILE.npz]

ENGINE_DIR defaults to engines/demo (exported from the shipped demo model when missing or stale, as
`ddit-export demo` does); any folder of demo engines works (e.g. one exported from retrained adapters).
The rule defaults to the folder's manifest (rule, tau, sizes, error model). Prints one table (speed-up,
token cost, FD, FD ratio, accuracy, PSNR, each with its 95% bootstrap interval) and writes every figure
as JSON; every fixed row also carries its paired difference from the rule on the same seeds (`vs_rule`:
the interval that says whether it really beats the rule). `--scores` keeps each row's per-sample scores
for tools/compare_quality_runs.py (two runs, e.g. two adapter packs, compared pair by pair). What is
measured and how: ddit_export/demo/quality_eval.py, docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ddit_export.commands import argtypes
from ddit_export.commands.arglists import patch_list
from ddit_export.demo.engines import DEFAULT_ENGINE_DIR
from ddit_export.demo.quality_figures import with_ci


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine_dir", nargs="?", default=str(DEFAULT_ENGINE_DIR))
    p.add_argument("--samples", "-n", type=argtypes.positive_int, default=480)
    p.add_argument("--seed", type=argtypes.seed, default=10_000, help="seed of the first sample (default 10000)")
    p.add_argument("--steps", type=argtypes.steps, default=28)
    p.add_argument("--rule", help="dynamic rule (default: the manifest's)")
    p.add_argument("--tau", type=argtypes.tau, help="the rule's threshold (default: the manifest's)")
    p.add_argument("--sizes", type=patch_list, help="sizes the rule may pick (default: the manifest's)")
    p.add_argument("--base-first-steps", type=argtypes.non_negative_int, metavar="N",
                   help="the rule runs the first N steps at the base (default: the manifest's, else 0)")
    p.add_argument("--fixed", action="append", metavar="SPEC", default=[],
                   help="also evaluate this fixed schedule (e.g. 4x25,2x3; repeat; with --cost-band 0: only these)")
    p.add_argument("--cost-band", type=float, default=None,
                   help="fixed schedules of token cost in [rule, rule + band] (default 0.05; 1 = all dearer ones)")
    p.add_argument("--only-fixed", action="store_true",
                   help="evaluate only the --fixed schedules (no cost band): a shorter run")
    p.add_argument("--base-every", type=argtypes.positive_int, default=None,
                   help="time a static-base run before every K-th sample of each fixed schedule (default 16)")
    p.add_argument("--json", help="write every figure here (default outputs/quality-<seed>.json)")
    p.add_argument("--scores", metavar="FILE.npz",
                   help="also write every row's per-sample scores (classifier features, correctness, MSE to the "
                        "base) here, for tools/compare_quality_runs.py")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from ddit_export.commands.errors import run_guarded

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)  # a log keeps whole rows
    return run_guarded(lambda: evaluate(parse_args(argv), console))


def evaluate(args, console: Console) -> int:
    from ddit_export.demo.classifier import load_classifier
    from ddit_export.demo.engines import DEMO_PATCH_SIZES, demo_engine_folder
    from ddit_export.demo.quality_eval import DEFAULT_BASE_EVERY, DEFAULT_COST_BAND, beaten_by, evaluate_rule_and_fixed
    from ddit_export.runtime.backends import get_backend
    from ddit_export.runtime.runner import schedule_config
    from ddit_export.runtime.schedule_spec import check_schedule, parse_schedule
    from ddit_export.util.atomic import check_writable, write_text_atomic

    fixed = {f"fixed {spec}": parse_schedule(spec, flag="--fixed") for spec in args.fixed}
    for schedule in fixed.values():  # before any sampling: a wrong length would fail after the rule's run
        check_schedule(schedule, DEMO_PATCH_SIZES, args.steps, flag="--fixed")
    band = DEFAULT_COST_BAND if args.cost_band is None else args.cost_band
    if not band >= 0:
        raise ValueError(f"--cost-band must be >= 0 (got {band})")
    if args.only_fixed and not fixed:
        raise ValueError("--only-fixed evaluates the --fixed schedules: name at least one (e.g. --fixed 4x25,2x3)")
    band = None if args.only_fixed else band
    out = Path(args.json or f"outputs/quality-{args.seed}.json").expanduser()
    check_writable(out.parent, "--json's folder")
    scores = Path(args.scores).expanduser() if args.scores else None
    if scores is not None:
        check_writable(scores.parent, "--scores' folder")
    folder = demo_engine_folder(args.engine_dir)
    with get_backend("onnx", folder) as backend:
        config = schedule_config(backend, tau=args.tau, rule=args.rule, base_first_steps=args.base_first_steps,
                                 patch_sizes=tuple(args.sizes) if args.sizes else None)
        label = f"{args.rule or backend.manifest.get('scheduler', {}).get('rule', 'rule')}@{config.tau:g}"
        if config.base_first_steps:
            label += f", base first {config.base_first_steps}"
        what = "the --fixed schedules" if band is None else f"fixed schedules of token cost [rule, rule + {band:g}]"
        console.print(f"{folder}: {label} and {what}, "
                      f"{args.samples} samples (seeds {args.seed}-{args.seed + args.samples - 1}), {args.steps} steps",
                      markup=False)
        report = evaluate_rule_and_fixed(
            backend, load_classifier(), samples=args.samples, seed=args.seed, steps=args.steps, rule_config=config,
            rule_label=label, fixed=fixed, cost_band=band,
            base_every=args.base_every or DEFAULT_BASE_EVERY, progress=lambda m: console.print(m, markup=False),
            # what is measured so far, rewritten whole after each row: a stopped run keeps it
            partial=lambda r: write_text_atomic(out, json.dumps(r, indent=1) + "\n"), scores_path=scores)
    report["beaten_by"] = beaten_by(report["rows"], label)
    report["beaten_beyond_interval_by"] = beaten_by(report["rows"], label, beyond_interval=True)
    print_table(console, report)
    write_text_atomic(out, json.dumps(report, indent=1) + "\n")
    console.print(f"wrote {out}")
    return 0


def print_table(console: Console, report: dict) -> None:
    rows = report["rows"]
    rule = rows[report["rule"]]
    n = report["samples"]
    table = Table(title=f"{report['engines']}, {report['steps']} steps, ONNX Runtime CPU", title_justify="left")
    for col in ("configuration", "speed-up", "token cost", "FD to real", "FD ratio", "accuracy", "PSNR vs base (dB)"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    table.add_row("static base", "1.00x", "1.000", with_ci(rule["fd_base"], rule["fd_base_ci"], ".1f"), "1",
                  with_ci(rule["accuracy_base"], rule["accuracy_base_ci"], ".1f", 100, "%"), "inf")
    for name, r in sorted(rows.items(), key=lambda kv: (kv[1]["kind"] != "dynamic", kv[1]["token_cost"])):
        table.add_row(name, with_ci(r["speedup"], r["speedup_ci"], ".2f", unit="x"), f"{r['token_cost']:.3f}",
                      with_ci(r["fd_ddit"], r["fd_ddit_ci"], ".1f"), with_ci(r["fd_ratio"], r["fd_ratio_ci"], ".3f"),
                      with_ci(r["accuracy_ddit"], r["accuracy_ddit_ci"], ".1f", 100, "%"),
                      with_ci(r["psnr_db"], r["psnr_db_ci"], ".2f"), style="bold" if r["kind"] == "dynamic" else None)
    console.print(table)
    console.print(f"{n} samples per row (seeds {report['seeds'][0]}-{report['seeds'][1]}, classes in turn); "
                  "[95% intervals: bootstrap, 1000 resamples; docs/quality.md]", markup=False)
    halves = " and ".join(map(str, rule["fd_halves_samples"]))
    console.print(f"FD noise floor (the base against itself, disjoint seed halves of {halves}): "
                  f"{with_ci(rule['fd_noise_floor'], rule['fd_noise_floor_ci'], '.1f')}; {report['rule']} against "
                  f"the base on the same halves: {with_ci(rule['fd_ddit_vs_base'], rule['fd_ddit_vs_base_ci'], '.1f')}",
                  markup=False)
    for name, r in rows.items():
        if "vs_rule" in r:
            d = r["vs_rule"]
            console.print(f"{name} minus the rule, paired: FD {with_ci(d['fd_ddit'], d['fd_ddit_ci'], '+.1f')}, "
                          f"accuracy {with_ci(d['accuracy_ddit'], d['accuracy_ddit_ci'], '+.1f', 100)} points, "
                          f"PSNR {with_ci(d['psnr_db'], d['psnr_db_ci'], '+.2f')} dB", markup=False)
    for key, names in report["beaten_by"].items():
        sure = report["beaten_beyond_interval_by"][key]
        console.print(f"{key}: rule beaten by {len(names)} of {len(rows) - 1} fixed schedules"
                      + (f" ({', '.join(names)})" if names else "")
                      + f"; beyond the paired 95% interval by {len(sure)}" + (f" ({', '.join(sure)})" if sure else ""),
                      markup=False)


if __name__ == "__main__":
    sys.exit(main())
