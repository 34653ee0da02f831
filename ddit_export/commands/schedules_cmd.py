"""`ddit-export schedules ENGINE_DIR`: the dynamic rule(s) against fixed schedules of the same cost.

Runs the static base, families of fixed schedules (coarse-then-base, base-then-coarse, spread, mixed
coarse-to-fine) and the dynamic rule(s) on the same samples (prompts x seeds), then prints the points
on the fixed front and every dynamic point with its place against that front. The front is taken on
--front-metric: PSNR vs the static base (default), or on the demo, whose classifier scores images,
Frechet distance to real images (`fd`, lower is better) or class accuracy. Writes into --out:
`schedules.json` (every point), `schedules.md` (the tables) and `schedules.png` (quality vs cost).
Run it on your own model before trusting a dynamic setting: if a fixed schedule of the same cost is
as good, pin that one (`--schedule` on generate, demo, bench and the drop-ins).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from ..util import limits
from ..util.atomic import check_writable
from . import argtypes
from .arglists import add_backend_argument, comma_list, read_engine_folder
from .errors import run_guarded
from .progress import Counted
from .prompts import evaluation_hooks, prompts_for

FRONT_METRIC_NAMES = ("psnr", "fd", "accuracy")  # bench/schedules.FRONT_METRICS (kept torch-free for --help)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("engine_dir", metavar="ENGINE_DIR", help="engine folder (holds manifest.json)")
    add_backend_argument(p)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--steps", type=argtypes.steps, default=28, help="denoising steps per image (default 28)")
    p.add_argument("--seeds", default="100,101,102,103",
                   help="comma list of noise seeds per prompt (default 100-103: not the seeds rules were tuned on)")
    p.add_argument("--prompt", action="append",
                   help="a prompt (repeat for several; default: every demo class on the demo, else one prompt)")
    p.add_argument("--dynamic", action="append", metavar="RULE@TAU",
                   help="a dynamic point, e.g. paper@0.004 (repeat; default: the manifest's rule and tau, "
                        "and the paper's rule at the same tau)")
    p.add_argument("--sizes", help="patch sizes the schedules may use, the base included (default: every engine's)")
    p.add_argument("--front-metric", choices=sorted(FRONT_METRIC_NAMES), default="psnr",
                   help="quality the fixed front and the dynamic points' places are taken on: psnr (vs the static "
                        "base; default), fd (Frechet distance to real images, lower is better) or accuracy "
                        "(fd and accuracy need the model's own classifier: the demo)")
    p.add_argument("--out", help="output folder (default outputs/schedules-<engine dir>)")


def run(args: argparse.Namespace) -> int:
    return run_guarded(lambda: schedules_command(args, Console(highlight=False)))


def parse_dynamic(text: str) -> tuple[str, float]:
    from ..runtime.rules import RULES

    rule, _, tau = text.partition("@")
    if rule not in RULES or not tau:
        raise ValueError(f"--dynamic {text!r}: write RULE@TAU with RULE one of {', '.join(RULES)} (e.g. paper@0.004)")
    try:
        value = float(tau)
    except ValueError:
        raise ValueError(f"--dynamic {text!r}: {tau!r} is not a number") from None
    if not value >= 0:
        raise ValueError(f"--dynamic {text!r}: tau must be >= 0")
    return rule, value


def schedules_command(args: argparse.Namespace, console: Console) -> int:
    from ..bench import schedules as sch
    from ..bench.flops import flops_table
    from ..pipelines.registry import pipeline_for
    from ..runtime.backends import backend_class, get_backend
    from ..runtime.runner import schedule_config
    from ..runtime.scheduler import DEFAULT_RULE
    from .bench_cmd import check_device

    folder, manifest = read_engine_folder(args.engine_dir)
    if args.steps < 4:
        raise ValueError(f"--steps must be at least 4: a dynamic rule needs 3 warm-up steps (got {args.steps})")
    seeds = comma_list(args.seeds, "--seeds", check=limits.check_seed)
    device = check_device(args.device)
    backend_class(args.backend)
    defaults = manifest.get("scheduler", {})
    dynamic = [parse_dynamic(d) for d in args.dynamic] if args.dynamic else None
    hooks = evaluation_hooks(manifest)
    if args.front_metric != "psnr" and "score" not in hooks:
        raise ValueError(f"--front-metric {args.front_metric}: the engines' model has no classifier to score images "
                         f"(only the demo's has); use --front-metric psnr")
    prompts = prompts_for(args.prompt, manifest)
    samples = [(prompt, seed) for seed in seeds for prompt in prompts]
    out = Path(args.out).expanduser() if args.out else Path("outputs") / f"schedules-{folder.resolve().name}"
    check_writable(out)  # before any sampling

    pipeline = pipeline_for(manifest)
    with get_backend(args.backend, folder, device=device, manifest=manifest) as backend:
        sizes = sorted(comma_list(args.sizes, "--sizes")) if args.sizes else list(backend.patch_sizes)
        if backend.base_patch not in sizes or not set(sizes) <= set(backend.patch_sizes):
            raise ValueError(f"--sizes must be some of the engines' sizes {list(backend.patch_sizes)}, the base "
                             f"{backend.base_patch} included (got {sizes})")
        if dynamic is None:
            tau = float(defaults.get("tau", 1e-3))
            rule = defaults.get("rule", DEFAULT_RULE)
            dynamic = sorted({(rule, tau), ("paper", tau)})
        configs = {f"{rule}@{tau:g}": ("dynamic", schedule_config(backend, tau=tau, rule=rule,
                                                                   patch_sizes=tuple(sizes)))
                   for rule, tau in dynamic}
        for label, schedule in sch.fixed_families(args.steps, sizes, backend.base_patch).items():
            configs[label] = ("fixed", schedule_config(backend, schedule=schedule))
        console.print(f"{len(configs)} schedules (+ the static base) x {len(samples)} samples, {args.steps} steps, "
                      f"backend {args.backend}")
        tokens = manifest.tokens
        with Counted(console, len(configs), "schedules", unit="schedule") as bar:  # after the static base
            points = sch.evaluate(
                backend, samples, configs, args.steps, tokens=tokens, flops=flops_table(manifest),
                conditioning=lambda prompt: pipeline.conditioning(manifest, prompt, device=device),
                to_images=hooks.get("to_images"), score=hooks.get("score"),
                progress=lambda message: bar.advance(status=message))
    sch.mark_front(points, args.front_metric)
    from ..bench.schedules_report import write_reports

    written = write_reports(points, out, title=f"schedules of {folder} ({len(samples)} samples, {args.steps} steps, "
                                               f"{args.backend}; front on {args.front_metric})", console=console,
                            metric=args.front_metric)
    for path in written:
        console.print(f"wrote {path}")
    return 0
