"""`ddit-export inspect DIR`: a manifest, readably."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .errors import run_guarded
from .export_cmd import summary_table


def add_arguments(p) -> None:
    p.add_argument("engine_dir", metavar="DIR", help="engine folder holding manifest.json")


def run(args) -> int:
    from ..artifacts.manifest import read_manifest

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough for the summary table on one line per size
        console.width = max(console.width, 120)

    def body():
        m = read_manifest(args.engine_dir)
        model, adapters, req = m["model"], m["adapters"], m["request"]
        console.print(f"[bold]{m['family']}[/] model [cyan]{model['id']}[/] (config {model['config_hash']}, "
                      f"weights sha256 {model['weights_sha256'][:12]}...)")
        config = {k: v for k, v in model.get("config", {}).items() if not k.startswith("_")}
        console.print("model config: " + ", ".join(f"{k}={_compact(v)}" for k, v in config.items()))
        trained = "trained" if adapters["trained"] else "[yellow]UNTRAINED DDiT modules[/]"
        pack = f"{adapters['path']} (sha256 {adapters['sha256'][:12]}...)" if adapters.get("path") else "none"
        console.print(f"adapters: {pack}; {trained}")
        frames = f", {req['frames']} frames" if req.get("frames") else ""
        console.print(f"geometry: {req['height']}x{req['width']} pixels{frames}, batch {req['batch']}, latent "
                      f"{'x'.join(map(str, m['latent_shape']))}, text {req['text_len']} tokens; patch sizes "
                      f"{', '.join(map(str, m['patch_sizes']))} (base {m['base_patch']})")
        buckets_table(console, m, args.engine_dir)
        console.print(f"precision {m['dtype']}, ONNX opset {m['opset']}, manifest format {m['format']}, "
                      f"built {m['created']}")
        console.print(_scheduler_line(m["scheduler"]))
        io = Table(title="engine I/O (identical for every patch size)")
        for col in ("", "name", "shape", "dtype"):
            io.add_column(col)
        for kind in ("inputs", "outputs"):
            for t in m["io"][kind]:
                io.add_row(kind[:-1], t["name"], "x".join(map(str, t["shape"])), t["dtype"])
        console.print(io)
        console.print(summary_table(m, args.engine_dir))
        console.print("tools: " + ", ".join(f"{k} {v}" for k, v in m["tools"].items() if v))

    return run_guarded(body)


def buckets_table(console: Console, m, folder) -> None:
    """The resolution buckets (one row each) and what their weights cost on disk, by layout."""
    from pathlib import Path

    from .export_cmd import human_bytes

    buckets = m.buckets
    table = Table(title=f"resolution buckets ({len(buckets)}; `generate --height H --width W` picks one, the "
                        "first by default)")
    for col in ("bucket", "latent", "tokens per size", "own files"):
        table.add_column(col, justify="left")
    files = {}  # file -> the buckets listing it
    for b in buckets:
        view = m.at_bucket(b.height, b.width)
        for e in view["engines"]:
            for f in e["files"]:
                files.setdefault(f, set()).add(b.name)
    sizes = {f: (Path(folder) / f).stat().st_size if (Path(folder) / f).is_file() else 0 for f in files}
    for i, b in enumerate(buckets):
        own = sum(sizes[f] for f, owners in files.items() if owners == {b.name})
        tokens = ", ".join(f"p{p} {n}" for p, n in sorted(m.at_bucket(b.height, b.width).tokens.items()))
        table.add_row(b.name + (" (default)" if i == 0 else ""), "x".join(map(str, b.latent_shape)), tokens,
                      human_bytes(own))
    console.print(table)
    shared = sum(sizes[f] for f, owners in files.items() if len(owners) > 1)
    engines = len(m.all_engines)
    if m.layout == "staged":
        console.print(f"weights: the staged layout's trunk ({human_bytes(shared)} on disk) is ONE copy for every "
                      f"bucket and size; each bucket adds only its embeds/heads")
    else:
        console.print(f"weights: the single layout holds one copy of the weights per engine ({engines} engines = "
                      f"{len(buckets)} bucket(s) x {len(m.patch_sizes)} size(s) x artifact kinds, "
                      f"{human_bytes(sum(sizes.values()))} on disk); `--layout staged` shares one trunk")


def _compact(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _scheduler_line(sched: dict) -> str:
    """The engines' default schedule and, when calibrated, what the calibration measured and chose."""
    parts = [f"tau {sched['tau']:g}", f"rho {sched['rho']:g}", f"warm-up p{sched.get('warmup_patch')}"]
    if sched.get("patch_sizes"):
        parts.append(f"sizes {','.join(map(str, sched['patch_sizes']))}")
    if sched.get("settle_steps"):
        parts.append(f"settle {sched['settle_steps']} steps")
    line = "scheduler defaults: " + ", ".join(parts)
    cal = sched.get("calibration")
    if not cal:
        return line + "; not calibrated (`ddit-export calibrate`)"
    chosen, budget, speed = cal.get("chosen", {}), cal.get("budget", {}), cal.get("speed", "?")
    metric = budget.get("metric", "?")
    grid = cal.get("grid", {})
    return (f"{line}\ncalibrated {cal.get('date', '?')} on {cal.get('backend', '?')}/{cal.get('device', '?')}, "
            f"{len(cal.get('samples', []))} samples x {cal.get('steps', '?')} steps, grid "
            f"{len(grid.get('tau', []))} tau x {len(grid.get('rho', []))} rho: chose tau {chosen.get('tau', '?'):.4g} "
            f"rho {chosen.get('rho', '?'):g} ({speed} {chosen.get(speed, float('nan')):.2f}x, {metric} "
            f"{chosen.get(metric, float('nan')):.3f} >= {budget.get('min', float('nan')):g})")
