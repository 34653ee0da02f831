"""`ddit-export calibrate`: sweep the scheduler's tau (log grid) and rho, pick tau for a quality
budget, and store it in the engine folder's manifest as the default.

Writes into --out: `calibration.json` (every point), `calibration.md` (the Pareto table) and
`calibration.png` (speed vs quality). The manifest is rewritten atomically; `--dry-run` leaves it.
Exit 1 when no grid point meets the budget (nothing stored).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from ..util import limits
from ..util.atomic import check_writable, check_writable_file, staged_files, write_text_atomic
from . import argtypes
from .arglists import add_backend_argument, add_bucket_arguments, at_bucket, comma_list, read_engine_folder
from .bench_cmd import check_device
from .errors import EXIT_FAILED, fail, run_guarded
from .progress import Counted
from .prompts import DEFAULT_PROMPT, prompts_for

SPEED_FLAGS = {"tokens": "token_speedup", "flops": "flop_speedup", "wall": "wall_speedup"}
DEFAULT_BUDGETS = {"psnr": 30.0, "ssim": 0.9, "image_psnr": 30.0, "image_ssim": 0.9}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("engine_dir", metavar="ENGINE_DIR", help="engine folder (holds manifest.json)")
    add_backend_argument(p, "engine runtime to calibrate on")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--steps", type=argtypes.steps, default=28, help="denoising steps per image (default 28)")
    p.add_argument("--seeds", default="0,1", help="comma list of noise seeds (default 0,1)")
    p.add_argument("--prompt", action="append", help="a prompt (repeat for several; samples = prompts x seeds)")
    p.add_argument("--taus", help="explicit comma list of tau values (overrides the log grid)")
    p.add_argument("--tau-min", type=argtypes.tau, default=1e-4, help="log grid start (default 1e-4)")
    p.add_argument("--tau-max", type=argtypes.tau, default=1.0, help="log grid end (default 1)")
    p.add_argument("--tau-points", type=argtypes.positive_int, default=9, help="log grid points (default 9)")
    p.add_argument("--rhos", default="0.2,0.4,0.6", help="comma list of rho fractions (default 0.2,0.4,0.6)")
    p.add_argument("--metric", choices=sorted(DEFAULT_BUDGETS), default="psnr",
                   help="quality metric of the budget: on final latents, or image_* on decoded images "
                   "(needs a VAE or the demo codec)")
    p.add_argument("--budget", type=argtypes.finite_float,
                   help="minimum mean quality vs the static base (default psnr 30 dB, ssim 0.9)")
    p.add_argument("--speed", choices=sorted(SPEED_FLAGS), default="tokens",
                   help="speed-up maximised: tokens / flops (noise-free schedule cost) or wall (default tokens)")
    p.add_argument("--cache", action="store_true",
                   help="instead of tau: fit TeaCache's rescaling polynomial on this model's trajectories (a staged "
                        "folder; stored as manifest cache.teacache, used by --cache teacache:T)")
    p.add_argument("--dry-run", action="store_true", help="report only; leave the manifest as it is")
    p.add_argument("--error-model", action="store_true",
                   help="fit the predicted-error rule's error model on base trajectories (one extra engine call "
                        "per coarse size per step) and make predicted-error the folder's rule; no tau sweep "
                        "(run calibrate again without it to pick tau)")
    add_bucket_arguments(p, "the resolution bucket to calibrate; its fit is stored for it alone (default: the "
                            "first)")
    p.add_argument("--out", help="folder for calibration.json/.md/.png (default outputs/calibrate-<engine dir>)")
    p.add_argument("--json", metavar="FILE", help="JSON report path (default OUT/calibration.json)")


def run(args: argparse.Namespace) -> int:
    return run_guarded(lambda: calibrate_command(args, Console(highlight=False)))


def _grid(args) -> tuple[list[float], list[float]]:
    from ..bench.calibrate import log_grid

    if args.taus:
        taus = comma_list(args.taus, "--taus", float, check=limits.check_tau)
    else:
        taus = log_grid(args.tau_min, args.tau_max, args.tau_points)
    rhos = comma_list(args.rhos, "--rhos", float, check=limits.check_rho)  # argparse bounded the other numbers
    return taus, rhos


def calibrate_command(args: argparse.Namespace, console: Console) -> int:
    if args.error_model:
        return error_model_command(args, console)
    if args.cache:
        from .calibrate_cache_cmd import calibrate_cache_command

        return calibrate_cache_command(args, console)
    from ..bench import calibrate, plots, report
    from ..bench.flops import flops_table
    from ..runtime.backends import backend_class, get_backend

    taus, rhos = _grid(args)  # flags first: refused before any file is read
    seeds = comma_list(args.seeds, "--seeds", check=limits.check_seed)
    folder, manifest = read_engine_folder(args.engine_dir)
    manifest, bucket = at_bucket(manifest, args.height, args.width)  # fitted per resolution bucket
    samples = [calibrate.Sample(p, s) for p in (args.prompt or [DEFAULT_PROMPT]) for s in seeds]
    device = check_device(args.device)
    backend_class(args.backend)
    decode = calibrate.image_decoder(manifest, device)
    if args.metric.startswith("image_") and decode is None:
        raise ValueError(f"--metric {args.metric} needs decoded images, but {manifest['model']['id']} has no VAE; "
                         "use --metric psnr or ssim (on latents)")
    budget = DEFAULT_BUDGETS[args.metric] if args.budget is None else args.budget
    speed = SPEED_FLAGS[args.speed]
    out = Path(args.out).expanduser() if args.out else Path("outputs") / f"calibrate-{folder.resolve().name}"
    check_writable(out)  # before any timing: a read-only or full disk is refused at once
    if args.json:
        check_writable_file(Path(args.json).expanduser(), "--json")

    tokens = manifest.tokens
    total = len(taus) * len(rhos)
    console.print(f"sweeping {len(taus)} tau x {len(rhos)} rho = {total} points over {len(samples)} samples, "
                  f"{args.steps} steps, backend {args.backend}")

    def progress(point, done, of):
        bar.update(done, of, status=f"tau {point['tau']:.3g} rho {point['rho']:g}: {point['token_speedup']:.2f}x, "
                                    f"{args.metric} {point.get(args.metric, float('nan')):.3f}")

    with get_backend(args.backend, folder, device=device, bucket=bucket) as backend, \
            Counted(console, total, "sweeping", unit="point") as bar:
        try:
            points, static = calibrate.sweep(backend, samples, taus, rhos, args.steps, decode=decode, tokens=tokens,
                                             flops=flops_table(manifest), progress=progress)
        except NotImplementedError as err:
            raise ValueError(f"the runtime cannot sample {manifest['family']} engines yet: {err}") from None
    calibrate.mark_pareto(points, speed, args.metric)
    chosen = calibrate.pick_point(points, args.metric, budget, speed)
    record = calibrate.calibration_record(
        chosen or {}, points, metric=args.metric, budget=budget, speed=speed, taus=taus, rhos=rhos,
        samples=samples, steps=args.steps, backend_name=args.backend, device=device, static=static)
    table = calibrate.pareto_markdown(points, args.metric, speed, chosen)
    data = calibrate.json_safe({"engine_dir": str(folder), **record})
    with staged_files(out) as staging:  # every report file or none (a full disk leaves no half of them)
        written = [report.write_json(staging / "calibration.json", data),
                   write_text_atomic(staging / "calibration.md", f"# calibration of {folder}\n\n{table}"),
                   plots.plot_calibration(points, chosen, args.metric, budget, speed, staging / "calibration.png")]
        if args.json:  # asked for elsewhere: there instead of in --out
            (staging / "calibration.json").unlink()
            written[0] = report.write_json(Path(args.json).expanduser(), data)
    written = [p if p.parent != staging else out / p.name for p in written]
    console.print(table)
    for path in written:
        console.print(f"wrote {path}")
    if chosen is None:
        return fail(f"no grid point reaches {args.metric} >= {budget:g}; the manifest is unchanged "
                    "(lower --tau-min, or relax --budget)", EXIT_FAILED)
    console.print(f"chosen: tau {chosen['tau']:.4g}, rho {chosen['rho']:g} ({speed} {chosen[speed]:.2f}x, "
                  f"{args.metric} {chosen[args.metric]:.3f} >= {budget:g})")
    if args.dry_run:
        console.print("--dry-run: manifest unchanged")
    else:
        calibrate.store_calibration(folder, manifest, chosen["tau"], chosen["rho"], record)
        console.print(f"stored as the default in {folder / 'manifest.json'}")
    return 0


def error_model_command(args: argparse.Namespace, console: Console) -> int:
    """`calibrate --error-model`: fit, report, and store the model (and the rule) in the manifest."""
    from ..artifacts.manifest import update_scheduler
    from ..bench import report
    from ..bench.error_model import fit_error_model
    from ..pipelines import pipeline_for
    from ..runtime.backends import backend_class, get_backend

    seeds = comma_list(args.seeds, "--seeds", check=limits.check_seed)
    tau = comma_list(args.taus, "--taus", float, check=limits.check_tau) if args.taus else None
    if tau is not None and len(tau) != 1:
        raise ValueError(f"--error-model stores one tau: give --taus a single value (got {len(tau)})")
    folder, manifest = read_engine_folder(args.engine_dir)
    manifest, bucket = at_bucket(manifest, args.height, args.width)  # fitted per resolution bucket
    device = check_device(args.device)
    backend_class(args.backend)
    prompts = prompts_for(args.prompt, manifest)
    out = Path(args.out).expanduser() if args.out else Path("outputs") / f"calibrate-{folder.resolve().name}"
    check_writable(out)
    pipeline = pipeline_for(manifest)
    with get_backend(args.backend, folder, device=device, bucket=bucket, manifest=manifest) as backend, \
            Counted(console, len(prompts) * len(seeds), "fitting the error model", unit="sample") as bar:
        conds = {prompt: pipeline.conditioning(manifest, prompt, device=device) for prompt in prompts}  # once each
        samples = [(conds[prompt], seed) for seed in seeds for prompt in prompts]
        model, record = fit_error_model(backend, samples, args.steps, progress=lambda: bar.advance())
    record = {**record, "backend": args.backend, "device": str(device), "seeds": seeds, "prompts": len(prompts)}
    sizes = manifest.get("scheduler", {}).get("patch_sizes") or [int(e["patch_size"]) for e in manifest["engines"]]
    changes = {"rule": "predicted-error", "warmup_patch": max(sizes),  # the rule warms up at the coarsest size
               "error_model": model.to_json(), "error_model_fit": record}
    if tau is not None:
        changes["tau"] = tau[0]
    with staged_files(out) as staging:
        written = report.write_json(staging / "error_model.json", {**model.to_json(), **record})
    console.print(f"wrote {out / written.name}")
    for p, coefficients in model.coefficients:
        console.print(f"size {p}: velocity error / statistic {min(coefficients):.3g} .. {max(coefficients):.3g} "
                      f"over sigma {model.sigmas[0]:.3g} .. {model.sigmas[-1]:.3g}")
    if args.dry_run:
        console.print("--dry-run: manifest unchanged")
        return 0
    update_scheduler(folder, manifest, changes)
    console.print(f"stored in {folder / 'manifest.json'}: rule predicted-error"
                  + (f", tau {tau[0]:g}" if tau else "; pick its tau with `ddit-export calibrate` (a sweep)"))
    return 0
