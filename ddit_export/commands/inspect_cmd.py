"""`ddit-export inspect DIR`: a manifest, readably."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .errors import run_guarded
from .export_cmd import summary_table


def add_arguments(p) -> None:
    p.add_argument("engine_dir", metavar="DIR", help="engine folder holding manifest.json")


def run(args) -> int:
    from ..export.manifest import read_manifest

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough for the summary table on one line per size
        console.width = max(console.width, 120)

    def body():
        m = read_manifest(args.engine_dir)
        model, adapters, sched = m["model"], m["adapters"], m["scheduler"]
        console.print(f"[bold]{m['family']}[/] model [cyan]{model['id']}[/] (config {model['config_hash']}, "
                      f"weights {model['weights_sha256'][:12]}...)")
        trained = "trained" if adapters["trained"] else "[yellow]UNTRAINED DDiT modules[/]"
        console.print(f"adapters: {adapters['path'] or '-'} ({trained})")
        req = m["request"]
        console.print(f"resolution {req['height']}x{req['width']}, batch {req['batch']}, text {req['text_len']} "
                      f"tokens, dtype {m['dtype']}, opset {m['opset']}, built {m['created']}")
        console.print(f"scheduler defaults: tau {sched['tau']}, rho {sched['rho']}, warm-up p{sched['warmup_patch']}, "
                      f"calibration {sched['calibration'] or 'none'}")
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
