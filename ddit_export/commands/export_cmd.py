"""`ddit-export flux`: export one validated static-shape engine per patch size."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import argtypes
from .arglists import patch_list
from .errors import run_guarded, stderr


def add_arguments(p: argparse.ArgumentParser, family: str = "flux") -> None:
    """Every setting defaults to None here: the request fills family defaults, a recipe fills the rest."""
    from ..families.defaults import FAMILY_DEFAULTS  # plain data: the help costs no torch import

    fam = FAMILY_DEFAULTS[family]
    presets = " | ".join(f"'{n}'" for n in fam.presets)
    h, w = fam.size
    small = "; ".join(f"{name}: {g.get('height')}x{g.get('width')}" + (f", {g['frames']} frames" if "frames" in g
                                                                        else "")
                      for name, g in fam.preset_geometry.items())
    p.add_argument("--recipe", help="YAML file of settings (see recipes/); flags given here override it")
    p.add_argument("--patch-sizes", type=patch_list, help="sizes in latent pixels, base included (default 2,4)")
    p.add_argument("--model", help=f"{presets} (random weights, offline), a diffusers pipeline/transformer folder, "
                                   f"or a model id in the local HF cache (default {fam.model})")
    p.add_argument("--variant", help="weights variant to load, as diffusers' from_pretrained(variant=...): e.g. fp16 "
                                     "for *.fp16.safetensors (default: the plain weights files)")
    p.add_argument("--adapters", help="adapter pack folder from `ddit-export train` (default: untrained DDiT modules)")
    p.add_argument("--height", type=argtypes.pixels, help=f"pixels (default {h}; {small})")
    p.add_argument("--width", type=argtypes.pixels, help=f"pixels (default {w})")
    if family == "flux":
        p.add_argument("--kontext-reference", choices=("step", "base"),
                       help="FLUX.1-Kontext: reference-image tokens at a coarse step packed at the step's size "
                            "(default: step) or kept at the base size (docs/variants.md)")
    p.add_argument("--resolutions", type=argtypes.resolutions, metavar="HxW,HxW",
                   help="resolution buckets, e.g. 1024x1024,768x1344,1344x768: one folder serves each (the first is "
                        "the default); the staged layout shares one trunk across them (docs/buckets.md)")
    if fam.frames:
        p.add_argument("--frames", type=argtypes.frames, help=f"video frames, 4k+1 (default {fam.frames})")
    p.add_argument("--batch", type=argtypes.batch,
                   help="engine batch (default 1; 2 = cond + uncond of CFG in one call)")
    p.add_argument("--text-len", type=argtypes.text_len, help=f"text tokens (default {fam.text_len})")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"),
                   help="engine precision (default: bf16 when the export device is CUDA, fp32 on the CPU, "
                        "whose ONNX Runtime has no bf16 math)")
    p.add_argument("--opset", type=argtypes.positive_int, help="ONNX opset, >= 20 (default 20)")
    p.add_argument("--out", help="output folder (default engines/<family>-<model>-<h>x<w>)")
    p.add_argument("--force", action="store_true", help="rebuild even if --out holds engines from other inputs")
    p.add_argument("--external-data", action="store_true", default=None,
                   help="store weights in one .onnx.data file beside each graph (automatic beyond 1.5 GiB)")
    p.add_argument("--artifacts", "--backends", dest="artifacts",  # --backends: the name before 2026-12
                   type=lambda t: tuple(b.strip() for b in t.split(",") if b.strip()),
                   help="artifact kinds to write, comma list of onnx, aoti, trt (default: onnx, plus trt where "
                        "TensorRT and CUDA are present; --backends is the old name)")
    p.add_argument("--device", help="where to trace and compile: cpu, cuda, cuda:N (default: cuda when present)")
    p.add_argument("--layout",  # checked by the request: a bad value gets one line, not argparse's usage
                   help="single: one merged engine per size (default); staged: per size an embed and a head, "
                        "ONE trunk shared by all sizes (all sizes in the memory of one model)")
    p.add_argument("--first-block-split", action="store_true", default=None,
                   help="staged, ONNX: also export the trunk as block 0 + blocks 1..N, which first-block caching "
                        "(--cache fbcache) runs; costs 4-8%% per full step on ONNX Runtime CPU (docs/caching.md)")
    p.add_argument("--skip-resource-check", action="store_true", default=None,
                   help="build even when the free memory or disk is below the export's estimate "
                        "(docs/export-memory.md)")
    p.add_argument("--tau", type=argtypes.tau, help="the engines' default DDiT threshold (default 0.001)")
    p.add_argument("--rho", type=argtypes.rho, help="the engines' default percentile as a fraction (default 0.4)")
    p.add_argument("--atol", type=argtypes.positive_float, help="validation absolute tolerance, fp32 (default 1e-4)")
    p.add_argument("--rtol", type=argtypes.positive_float, help="validation relative tolerance, fp32 (default 1e-3)")


REQUEST_FLAGS = ("model", "patch_sizes", "adapters", "height", "width", "frames", "batch", "text_len", "dtype",
                 "opset", "out", "force", "external_data", "artifacts", "device", "tau", "rho", "atol", "rtol",
                 "layout", "first_block_split", "variant", "kontext_reference", "resolutions", "skip_resource_check")


def request_settings(args, family: str) -> dict:
    """Recipe first, then every flag actually given on the command line."""
    from ..export.recipe import load_recipe

    settings = load_recipe(args.recipe, family) if args.recipe else {}
    for name in REQUEST_FLAGS:
        value = getattr(args, name, None)
        if value is not None and value is not False:
            settings[name] = value
    return settings


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
    from ..artifacts.manifest import Manifest

    manifest = Manifest(manifest)
    buckets = manifest.buckets
    shape = manifest["latent_shape"]
    staged = ", staged layout" if manifest.get("layout") == "staged" else ""
    where = f"{len(buckets)} resolution buckets" if len(buckets) > 1 else f"latent {shape}"
    table = Table(title=f"{manifest['family']} engines in {out}  ({manifest['dtype']}, {where}{staged})")
    if manifest["dtype"] != "fp32":
        table.caption = ("* validated through the fp32 twin of the same merged module "
                         "(ONNX Runtime CPU has no half math)")
    # Narrow columns; the file's folder names the backend (onnx/, aoti/, trt/). "peak" is the build's peak
    # host memory (RSS), "+ GPU" where it ran on one (docs/export-memory.md); folders built before show "-".
    columns = ("P", "tokens", "file", "size", "max|err|", "cosine", "export s", "peak")
    if len(buckets) > 1:
        columns = ("bucket", *columns)
    for col in columns:
        table.add_column(col, justify="left" if col in ("file", "bucket") else "right")
    for bucket in buckets:
        _bucket_rows(table, manifest.at_bucket(bucket.height, bucket.width), bucket.name if len(buckets) > 1 else None)
    return table


def _bucket_rows(table: Table, manifest: dict, bucket: str | None) -> None:
    for e in manifest["engines"]:
        v = e["validation"]
        twin = "*" if v["validated_as"] == "fp32-twin" else ""
        seconds = "reused" if e.get("reused") else f"{e['export_seconds']:.1f}"
        tokens = str(e["tokens"])
        if e.get("padding_tokens"):
            share = e["padding_tokens"] / (e["tokens"] - e["padding_tokens"])
            tokens += f" (pad {e['padded_grid'][0]}x{e['padded_grid'][1]}: +{share:.0%})"
        # A staged entry is a chain: embed, the shared trunk, head (the backend named before it).
        staged_chain = e.get("layout") == "staged"
        file = (f"{e['backend']}: " + " + ".join(f.rsplit("/", 1)[-1] for f in e["files"][:3]) if staged_chain
                else e["files"][0].rsplit("/", 1)[-1] if bucket else e["files"][0])
        row = (str(e["patch_size"]), tokens, file, human_bytes(e["bytes"]), f"{v['max_abs_err']:.1e}",
               f"{v['cosine']:.5f}{twin}", seconds, _peak(e))
        table.add_row(*((bucket, *row) if bucket else row))


def _peak(entry: dict) -> str:
    if entry.get("reused") or "peak_host_bytes" not in entry:
        return "-"
    gpu = f" + {human_bytes(entry['peak_gpu_bytes'])} GPU" if entry.get("peak_gpu_bytes") is not None else ""
    return human_bytes(entry["peak_host_bytes"]) + gpu


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run(args) -> int:
    from ..export.build import export_engines
    from ..export.request import ExportRequest

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough for the summary table on one line per size
        console.width = max(console.width, 120)

    family = args.command_name

    def body():
        settings = request_settings(args, family)
        req = ExportRequest(family=family, **settings)
        reporter = RichReporter(console)
        try:
            manifest = export_engines(req, reporter)
        finally:
            reporter.stop()
        console.print(summary_table(manifest, req.out_dir))
        if "dtype" not in settings:
            console.print(f"precision {req.dtype}: the default for a {req.device} export (bf16 on CUDA, fp32 on "
                          "the CPU; --dtype to choose)")
        console.print(f"manifest: {req.out_dir / 'manifest.json'}")

    return run_guarded(body)
