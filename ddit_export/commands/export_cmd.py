"""`ddit-export flux`: export one validated static-shape engine per patch size."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import run_guarded, stderr


def patch_list(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"patch sizes must be integers like 2,4,8 (got '{text}')") from None
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one patch size, e.g. 2,4")
    return sizes


def add_arguments(p: argparse.ArgumentParser, family: str = "flux") -> None:
    from ..families.base import family_by_name

    fam = family_by_name(family)
    presets = " | ".join(f"'{n}'" for n in fam.presets)
    p.add_argument("--patch-sizes", type=patch_list, default=(2, 4), help="sizes in latent pixels, base first (default 2,4)")
    p.add_argument("--model", default=fam.default_model,
                   help=f"{presets} (random weights), a diffusers pipeline/transformer folder, or a model id "
                        f"in the local HF cache (default {fam.default_model})")
    p.add_argument("--adapters", help="adapter pack folder from `ddit-export train` (default: untrained DDiT modules)")
    p.add_argument("--height", type=int, default=fam.default_size[0])
    p.add_argument("--width", type=int, default=fam.default_size[1])
    if fam.default_frames:
        p.add_argument("--frames", type=int, default=fam.default_frames, help="video frames, 4k+1")
    p.add_argument("--batch", type=int, default=1, help="engine batch (2 = cond + uncond of CFG in one call)")
    p.add_argument("--text-len", type=int, default=None, help=f"text tokens (default {fam.default_text_len})")
    p.add_argument("--dtype", default="bf16", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--opset", type=int, default=20)
    p.add_argument("--out", help="output folder (default engines/<family>-<model>-<h>x<w>)")
    p.add_argument("--force", action="store_true", help="rebuild even if --out holds engines from other inputs")
    p.add_argument("--external-data", action="store_true", default=None,
                   help="store weights in one .onnx.data file beside each graph (automatic beyond 2 GiB)")
    p.add_argument("--backends", type=lambda t: tuple(b.strip() for b in t.split(",") if b.strip()), default=None,
                   help="comma list of onnx, aoti, trt (default: onnx, plus trt where TensorRT and CUDA are present)")
    p.add_argument("--atol", type=float, default=1e-4, help="validation absolute tolerance (fp32)")
    p.add_argument("--rtol", type=float, default=1e-3, help="validation relative tolerance (fp32)")


class RichReporter:
    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]p{task.fields[patch]}[/]"), TextColumn("{task.description}"),
            BarColumn(), TimeElapsedColumn(), console=console, transient=False,
        )
        self.tasks = {}
        self.stages = 4

    def begin(self, sizes):
        self.progress.start()
        for p in sizes:
            self.tasks[p] = self.progress.add_task("waiting", total=self.stages, patch=p)

    def stage(self, patch, text):
        self.progress.update(self.tasks[patch], description=text, advance=1 if text != "merge" else 0.5)

    def done(self, patch, entry):
        text = "reused (unchanged)" if entry.get("reused") else "[green]validated[/]"
        self.progress.update(self.tasks[patch], description=text, completed=self.stages)

    def warn(self, text):
        stderr.print(f"[bold yellow]WARNING:[/] {escape(text)}")

    def stop(self):
        if self.tasks:  # a Progress that never started would still print a blank line
            self.progress.stop()


def summary_table(manifest: dict, out) -> Table:
    table = Table(title=f"{manifest['family']} engines in {out}  ({manifest['dtype']}, latent {manifest['latent_shape']})")
    if manifest["dtype"] != "fp32":
        table.caption = "* validated through the fp32 twin of the same merged module (ONNX Runtime CPU has no half math)"
    for col in ("patch", "backend", "tokens", "file", "on disk", "max|err|  cosine", "export s"):
        table.add_column(col, justify="left" if col in ("backend", "file", "max|err|  cosine") else "right")
    for e in manifest["engines"]:
        v = e["validation"]
        twin = "*" if v["validated_as"] == "fp32-twin" else ""
        verdict = f"{v['max_abs_err']:.1e}  {v['cosine']:.6f}{twin}"
        seconds = "reused" if e.get("reused") else f"{e['export_seconds']:.1f}"
        tokens = str(e["tokens"])
        if e.get("padding_tokens"):
            share = e["padding_tokens"] / (e["tokens"] - e["padding_tokens"])
            tokens += f" (pad {e['padded_grid'][0]}x{e['padded_grid'][1]}: +{share:.0%})"
        table.add_row(str(e["patch_size"]), e["backend"], tokens, e["files"][0], human_bytes(e["bytes"]), verdict,
                      seconds)
    return table


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run(args) -> int:
    family = args.command_name
    from ..export.build import export_engines
    from ..export.request import ExportRequest

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough for the summary table on one line per size
        console.width = max(console.width, 120)

    def body():
        req = ExportRequest(
            family=family, model=args.model, patch_sizes=args.patch_sizes, adapters=args.adapters,
            height=args.height, width=args.width, frames=getattr(args, "frames", None), batch=args.batch, text_len=args.text_len, dtype=args.dtype,
            opset=args.opset, out=args.out, force=args.force, external_data=args.external_data,
            atol=args.atol, rtol=args.rtol, backends=args.backends,
        )
        reporter = RichReporter(console)
        try:
            manifest = export_engines(req, reporter)
        finally:
            reporter.stop()
        console.print(summary_table(manifest, req.out_dir))
        console.print(f"manifest: {req.out_dir / 'manifest.json'}")

    return run_guarded(body)
