"""GPU smoke run: a FLUX-shaped model at full width through every backend this machine has.

    pip install -e ".[gpu,trt]"        # onnxruntime-gpu and TensorRT, where the machine allows
    python tools/gpu_smoke.py --out /tmp/smoke --json smoke.json

Exports the `smoke` preset (FLUX.1-dev's real widths: 3072 = 24 heads x 128, T5 4096, CLIP 768, at
reduced depth: 2 double + 4 single blocks; random weights, so nothing is fetched) at 1024x1024 for
patch sizes 2,4,8 in bf16, builds every backend available (ONNX always; AOTInductor for CUDA;
TensorRT when importable), validates each against PyTorch (the export fails otherwise), then times
every engine of every backend side by side (warm-ups, CUDA events, mean / p50 / p95) and writes
one JSON with the device, versions, validation errors and latencies.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata
from pathlib import Path

import torch

from ddit_export.artifacts.tensorrt_plans import unavailable_reason
from ddit_export.bench.latency import engine_latency
from ddit_export.export.build import export_engines
from ddit_export.export.request import ExportRequest
from ddit_export.runtime.backends import get_backend

TIMED_BACKENDS = ("torch", "torch-compile", "onnx", "aoti", "trt")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="engine folder to build (reused when unchanged)")
    p.add_argument("--json", default=None, help="result file (default OUT/smoke.json)")
    p.add_argument("--sizes", default="2,4,8")
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--layout", default="single", choices=("single", "staged"),
                   help="staged: per size an embed and a head, one trunk plan with a profile per size")
    return p.parse_args(argv)


def build(args) -> dict:
    backends = ["onnx"] + (["aoti"] if args.layout == "single" else []) + ([] if unavailable_reason() else ["trt"])
    request = ExportRequest(
        family="flux", model="smoke", patch_sizes=tuple(int(p) for p in args.sizes.split(",")),
        height=args.height, width=args.width, text_len=512, dtype=args.dtype, out=args.out,
        artifacts=tuple(backends), device="cuda", layout=args.layout,
    )
    return export_engines(request)


def load_backends(folder) -> tuple[dict, dict]:
    from ddit_export.bench.memory import memory_row, rss_bytes

    loaded, skipped = {}, {}
    for name in TIMED_BACKENDS:
        try:
            before = rss_bytes()
            loaded[name] = get_backend(name, folder, device="cuda")
            loaded[name].memory = memory_row(loaded[name], before, rss_bytes())
        except Exception as err:
            skipped[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return loaded, skipped


def versions() -> dict:
    names = ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "polygraphy", "diffusers", "ddit-export")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device is visible; run this on a GPU machine", file=sys.stderr)
        return 2
    manifest = build(args)
    backends, skipped = load_backends(args.out)
    rows = engine_latency(args.out, backends, warmup=args.warmup, iters=args.iters, device="cuda")
    memory = [b.memory for b in backends.values()]
    for backend in backends.values():
        backend.close()
    report = {
        "device": torch.cuda.get_device_name(), "host": platform.node(), "versions": versions(),
        "model": "smoke (FLUX.1-dev widths, 2 double + 4 single blocks, random weights)",
        "latent_shape": manifest["latent_shape"], "dtype": manifest["dtype"],
        "validation": [{k: e[k] for k in ("patch_size", "backend", "tokens", "validation", "export_seconds")}
                       for e in manifest["engines"]],
        "latency": rows, "memory": memory, "skipped_backends": skipped, "layout": args.layout,
    }
    path = Path(args.json or Path(args.out) / "smoke.json")
    path.write_text(json.dumps(report, indent=2))
    print(f"{'backend':<14}{'patch':>6}{'tokens':>8}{'mean ms':>10}{'p50 ms':>10}{'p95 ms':>10}{'vs base':>9}")
    for r in rows:
        print(f"{r['backend']:<14}{r['patch_size']:>6}{r['tokens']:>8}{r['mean_ms']:>10.2f}{r['p50_ms']:>10.2f}"
              f"{r['p95_ms']:>10.2f}{(r['speedup_vs_base'] or 0):>9.2f}")
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
