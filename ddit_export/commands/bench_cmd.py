"""`ddit-export bench`: per-engine latency, FLOPs and end-to-end speed-ups of an engine folder.

Writes into --out: `bench.json`, `bench.md` (the tables), `latency.png` (latency per size and
backend) and `schedule.png` (the DDiT schedule timeline). Every number comes from one run:
engines are timed round-robin, the end-to-end modes interleaved.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..util import limits
from ..util.atomic import check_writable, check_writable_file, staged_files, write_text_atomic
from ..util.devices import parse_device
from . import argtypes
from .arglists import (
    add_bucket_arguments,
    add_cache_argument,
    add_schedule_arguments,
    at_bucket,
    comma_list,
    read_engine_folder,
    schedule_from_args,
)
from .errors import run_guarded
from .progress import Counted


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("engine_dir", metavar="ENGINE_DIR", help="engine folder (holds manifest.json)")
    p.add_argument("--backends", help="comma list of torch | torch-compile | onnx | aoti | trt "
                   "(default: every backend the folder has engines for that loads on --device)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--warmup", type=argtypes.non_negative_int, default=10,
                   help="warm-up rounds before timing (default 10)")
    p.add_argument("--iters", type=argtypes.positive_int, default=50, help="timed round-robin rounds (default 50)")
    add_bucket_arguments(p, "time one resolution bucket of the folder (default: every bucket; end to end: the "
                            "first)")
    p.add_argument("--json", metavar="FILE", help="JSON report path (default OUT/bench.json)")
    p.add_argument("--out", help="folder for bench.json, bench.md and plots (default outputs/bench-<engine dir>)")
    e2e = p.add_argument_group("end to end (static base vs DDiT dynamic vs PyTorch eager base)")
    e2e.add_argument("--steps", type=argtypes.steps, default=28, help="denoising steps per image (default 28)")
    e2e.add_argument("--seeds", default="0", help="comma list of noise seeds (default 0)")
    e2e.add_argument("--e2e-repeats", type=argtypes.positive_int, default=1,
                     help="images per seed and mode (default 1)")
    e2e.add_argument("--e2e-backend", help="engine backend of the static and dynamic modes (default: the first timed)")
    e2e.add_argument("--tau", type=argtypes.tau, help="scheduler threshold (default: the manifest's)")
    e2e.add_argument("--rho", type=argtypes.rho, help="scheduler percentile as a fraction (default: the manifest's)")
    add_schedule_arguments(e2e, "; must equal --steps")
    e2e.add_argument("--prompt", default="a photograph of a red fox in fresh snow, golden hour")
    e2e.add_argument("--no-e2e", action="store_true", help="per-engine latency only")
    e2e.add_argument("--no-eager", action="store_true", help="skip the PyTorch eager base mode")
    add_cache_argument(e2e)  # adds the cache-alone and DDiT + cache modes (the paper's four-way table)
    p.add_argument("--peer", nargs="?", const="optimum", choices=["optimum"],
                   help="also time optimum-onnx's export of the base transformer beside our base engine: in this "
                        "process where optimum-onnx imports, else in an isolated venv created once in the cache")
    p.add_argument("--peer-venv", metavar="PATH",
                   help="the peer's venv: an existing one (e.g. with ddit-export[optimum]) or where to build it "
                        "(default $DDIT_EXPORT_PEER_VENV, else ~/.cache/ddit-export/peer-optimum-<pins hash>)")


def run(args: argparse.Namespace) -> int:
    return run_guarded(lambda: bench_command(args, Console(highlight=False)))


def check_device(name: str):
    return parse_device(name)


def _check_args(args) -> None:
    """What argparse could not check (it already bounded each number, commands/argtypes.py)."""
    args.fixed = schedule_from_args(args, args.steps)
    if getattr(args, "cache", None) is not None and args.no_e2e:
        raise ValueError("--cache compares end-to-end runs: drop --no-e2e")


def load_backends(folder: Path, manifest: dict, names: list[str] | None, device, console,
                  bucket: tuple[int, int] | None = None) -> tuple[dict, dict]:
    """name -> Backend; asked-for backends must load, defaults that cannot are skipped with a reason."""
    from ..bench.latency import manifest_backends
    from ..runtime.backends import BackendError, backend_class, get_backend

    explicit = names is not None
    names = names if explicit else manifest_backends(manifest)
    for name in names:
        backend_class(name)  # unknown name -> the list of backends, before loading anything
    from ..bench.memory import memory_row, rss_bytes

    loaded, skipped = {}, {}
    for name in names:
        try:
            before = rss_bytes()
            loaded[name] = get_backend(name, folder, device=device, bucket=bucket)
            loaded[name].memory = memory_row(loaded[name], before, rss_bytes())  # RSS of this load alone
        except BackendError as err:
            if explicit:
                raise
            skipped[name] = str(err)
            console.print(f"[yellow]skipping backend {name}: {err}[/]")
    if not loaded:
        raise ValueError(f"no backend could be loaded for {folder} on {device}: {skipped}")
    return loaded, skipped


def bench_command(args: argparse.Namespace, console: Console) -> int:
    from ..artifacts.manifest import tool_versions
    from ..bench import latency, plots, report

    seeds = comma_list(args.seeds, "--seeds", check=limits.check_seed)
    folder, manifest = read_engine_folder(args.engine_dir)
    _check_args(args)
    device = check_device(args.device)
    if getattr(args, "cache", None) is not None and manifest.get("layout", "single") != "staged":
        from ..runtime.backends.base import BackendError  # before any timing: the same line `generate` gives

        raise BackendError(f"--cache needs a staged engine folder (its trunk returns the residual that a cached "
                           f"step reuses); {folder} has the {manifest.get('layout', 'single')} layout: re-export "
                           "it with --layout staged")
    names = [n.strip() for n in args.backends.split(",") if n.strip()] if args.backends else None
    out = Path(args.out).expanduser() if args.out else Path("outputs") / f"bench-{folder.resolve().name}"
    check_writable(out)  # before any timing: a read-only or full disk is refused at once
    if args.json:
        check_writable_file(Path(args.json).expanduser(), "--json")

    at_bucket(manifest, args.height, args.width)  # both or neither, and a bucket of the folder: refused now
    buckets = [manifest.find_bucket(args.height, args.width)] if args.height is not None else manifest.buckets
    notes: list[str] = []  # caveats stated beside the numbers
    rows, memory, e2e = [], [], None
    for bucket in buckets:  # each resolution bucket timed on its own engines; end to end on the first
        view = manifest.at_bucket(bucket.height, bucket.width)
        backends, skipped = load_backends(folder, view, names, device, console, (bucket.height, bucket.width))
        for name, backend in backends.items():
            if getattr(backend, "cpu_threading", None):  # ONNX Runtime on the CPU: modes timed at load
                modes = ", ".join(f"p{p} {mode}" for p, mode in sorted(backend.cpu_threading.items()))
                notes.append(f"{name}{_at(bucket, manifest)}: ONNX Runtime CPU threading chosen per engine by timing "
                             f"at load: {modes}")
        try:
            console.print(f"timing {sum(len(b.patch_sizes) for b in backends.values())} engines{_at(bucket, manifest)} "
                          f"round-robin: {args.warmup} warm-up + {args.iters} rounds")
            with Counted(console, args.warmup + args.iters, "timing engines", unit="round") as bar:
                samples = latency.time_engines(backends, args.warmup, args.iters, device, progress=bar.update)
            rows += _bucket_rows(latency.engine_rows(view, samples), bucket, manifest)
            memory += [{**b.memory, "resolution": bucket.name} for b in backends.values()]
            if e2e is None and not args.no_e2e:
                e2e = _end_to_end(args, folder, view, backends, seeds, device, console)
        finally:
            for backend in backends.values():
                backend.close()
    peer = None
    if args.peer:
        from ..bench.peer_optimum import peer_latency

        peer = peer_latency(folder, args.warmup, args.iters, venv=args.peer_venv, progress=console.print)
    from ..bench.timing import Stopwatch

    result = {
        "engine_dir": str(folder), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "family": manifest["family"], "dtype": manifest["dtype"], "latent_shape": manifest["latent_shape"],
        "text_len": manifest["request"]["text_len"], "device": str(device), "clock": Stopwatch(device).kind,
        "warmup": args.warmup, "iters": args.iters, "backends": list(backends), "skipped_backends": skipped,
        "engines": rows, "end_to_end": e2e, "peer": peer, "notes": notes, "tools": tool_versions(),
        "memory": memory, "resolutions": [b.name for b in buckets],
    }
    with staged_files(out) as staging:  # every report file or none (a full disk leaves no half of them)
        written = [report.write_json(staging / "bench.json", result),
                   write_text_atomic(staging / "bench.md", report.bench_markdown(result)),
                   plots.plot_latency(rows, staging / "latency.png")]
        if e2e and "skipped" not in e2e:
            written.append(plots.plot_schedule(e2e["modes"]["dynamic"]["schedules"], int(manifest["base_patch"]),
                                               staging / "schedule.png"))
        if args.json:  # asked for elsewhere: there instead of in --out
            (staging / "bench.json").unlink()
            written[0] = report.write_json(Path(args.json).expanduser(), result)
    written = [p if p.parent != staging else out / p.name for p in written]
    _print(console, result, written)
    return 0


def _at(bucket, manifest) -> str:
    return f" at {bucket.name}" if len(manifest.buckets) > 1 else ""


def _bucket_rows(rows: list[dict], bucket, manifest) -> list[dict]:
    """Engine rows of one bucket; with several buckets each row's backend is labelled with it (tables, plots)."""
    if len(manifest.buckets) == 1:
        return rows
    return [{**r, "resolution": bucket.name, "backend": f"{r['backend']} {bucket.name}"} for r in rows]


def _end_to_end(args, folder, manifest, backends, seeds, device, console) -> dict:
    from ..bench.end_to_end import end_to_end
    from ..bench.flops import flops_table
    from ..runtime.backends import get_backend

    engine_name = args.e2e_backend or next((n for n in backends if n != "torch"), next(iter(backends)))
    if engine_name not in backends:
        raise ValueError(f"--e2e-backend {engine_name} is not among the timed backends {list(backends)}")
    eager = None
    if not args.no_eager:
        bucket = manifest.bucket
        eager = backends.get("torch") or get_backend("torch", folder, device=device,
                                                     bucket=(bucket.height, bucket.width))
    tokens = {int(e["patch_size"]): int(e["tokens"]) for e in manifest["engines"]}
    try:
        with Counted(console, 1, "end to end", unit="image") as bar:
            return end_to_end(backends[engine_name], eager, steps=args.steps, seeds=seeds, repeats=args.e2e_repeats,
                              tau=args.tau, rho=args.rho, prompt=args.prompt, tokens=tokens,
                              flops=flops_table(manifest), schedule=args.fixed, rule=args.rule,
                              cache=getattr(args, "cache", None), progress=bar.update)
    except (NotImplementedError, ValueError) as err:  # the runtime cannot sample this family: keep the timings
        console.print(f"[yellow]end to end skipped: {err}[/]")
        return {"skipped": str(err)}
    finally:
        if eager is not None and "torch" not in backends:
            eager.close()


def _print(console: Console, result: dict, written: list[Path]) -> None:
    # Eight short columns fit an 80-column terminal; bench.md and bench.json keep p50/p99 and the rest.
    table = Table(title=f"per engine ({result['clock']}; p50/p99 in bench.md)")
    for col in ("backend", "P", "tokens", "GFLOP", "mean ms", "p95 ms", "GFLOP/s", "vs base"):
        table.add_column(col, justify="left" if col == "backend" else "right", no_wrap=True)
    for r in result["engines"]:
        sp = r["speedup_vs_base"]
        table.add_row(r["backend"], str(r["patch_size"]), str(r["tokens"]), f"{r['flops'] / 1e9:.3g}",
                      f"{r['mean_ms']:.4g}", f"{r['p95_ms']:.4g}", f"{r['flops_per_s'] / 1e9:.3g}",
                      "n/a" if sp is None else f"{sp:.2f}x")
    console.print(table)
    for m in result.get("memory", []):
        weights = "n/a" if m["weight_bytes"] is None else f"{m['weight_bytes'] / 2**20:.1f} MiB"
        console.print(f"resident after loading sizes {m['sizes']} ({m['backend']}, {m['layout']} layout): "
                      f"weights {weights}, process RSS +{m['rss_load_bytes'] / 2**20:.1f} MiB")
    e2e = result["end_to_end"]
    if e2e and "skipped" not in e2e:
        for mode, s in e2e["modes"].items():
            console.print(f"{mode:>8}: {s['seconds_per_image']:.4f} s/image")
        sp, cost = e2e["speedups"], e2e["cost"]
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}x"  # noqa: E731
        if e2e.get("identical_schedules"):
            console.print("[yellow]dynamic and static ran the same schedule (DDiT kept the base size on every "
                          "step): no DDiT speed-up to report; raise --tau to let it pick coarser sizes[/]")
        else:
            console.print(f"speed-up dynamic/static {fmt(sp['dynamic_vs_static'])} (token cost "
                          f"{fmt(cost['token_speedup'])})")
        if sp["dynamic_vs_eager"] is not None:
            console.print(f"vs PyTorch eager: dynamic {fmt(sp['dynamic_vs_eager'])}, static "
                          f"{fmt(sp['static_vs_eager'])}")
        console.print(f"scheduler: {e2e['scheduler_overhead']['ms_per_step']:.3f} ms/step")
        if e2e.get("cache_table"):
            _print_cache(console, e2e)
    for path in written:
        console.print(f"wrote {path}")


def _print_cache(console: Console, e2e: dict) -> None:
    from ..bench.report import CACHE_MODES

    kind, table = e2e["cache"]["kind"], e2e["cache_table"]
    out = Table(title=f"{kind}:{e2e['cache']['threshold']:g} ({e2e['backend']}); PSNR/SSIM of final latents vs base")
    out.add_column("figure")
    for name in ("static base", f"{kind} alone", "DDiT alone", f"DDiT + {kind}"):
        out.add_column(name, justify="right")
    rows = [table[m] for m in CACHE_MODES]
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    out.add_row("seconds / image", *[f"{r['seconds_per_image']:.4f}" for r in rows])
    out.add_row("speed-up vs base", *[f"{r['speedup_vs_static']:.2f}x" for r in rows], style="bold")
    out.add_row("steps cached", *[f"{100 * r['cached_steps']:.0f}%" for r in rows])
    out.add_row("token cost", *[f"{r['token_cost']:.3f}" for r in rows])
    out.add_row("PSNR vs base (dB)", *[fmt(r["psnr_db"], ".2f") for r in rows])
    out.add_row("SSIM vs base", *[fmt(r["ssim"], ".3f") for r in rows])
    console.print(out)
    console.print(f"DDiT + {kind} vs DDiT alone: {e2e['speedups']['dynamic_cache_vs_dynamic']:.2f}x")
