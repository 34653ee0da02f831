"""Single vs staged layout of the same model, side by side: memory, per-step latency, numerics.

    python tools/layout_compare.py --single engines/flux-medium --staged engines/flux-medium-staged

- memory: each (layout, backend) is loaded in a fresh process; weight bytes held for all sizes
  (bench/memory.py) and the process RSS the load added. The single layout's base engine alone is
  loaded too: the bar compares the staged layout with all sizes against it.
- latency: the onnx backends of both layouts in ONE process, sizes and layouts interleaved
  round-robin, so both see the same machine load; median ms per call, and the staged/single
  ratio of the medians and of the best calls.
- numerics: the staged chain against the single engine of each size on the same inputs.
Writes one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch


def memory(folder: str, backend: str, sizes: str | None) -> dict:
    """Load one folder's backend (only `sizes` when given: the single layout's base engine alone)."""
    from ddit_export.artifacts.manifest import read_manifest
    from ddit_export.bench.memory import memory_row, rss_bytes
    from ddit_export.runtime.backends import backend_class, get_backend

    torch.set_num_threads(1)
    options = {"cpu_threading": "pool"} if backend == "onnx" else {}
    before = rss_bytes()
    if sizes:  # a manifest that lists only these sizes: the backend then loads only their engines
        keep = [int(p) for p in sizes.split(",")]
        manifest = read_manifest(folder)
        manifest = {**manifest, "patch_sizes": keep,
                    "engines": [e for e in manifest["engines"] if int(e["patch_size"]) in keep]}
        loaded = backend_class(backend)(folder, manifest, "cpu", **options)
    else:
        loaded = get_backend(backend, folder, **options)
    return {**memory_row(loaded, before, rss_bytes()), "folder": folder}


def _inputs(backend, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cond = {t.name: torch.randn(t.shape, generator=gen) for t in backend.io_spec.inputs}
    cond["timestep"] = torch.full(cond["timestep"].shape, 0.6)
    return cond.pop("latent"), cond


def latency_and_numerics(single: str, staged: str, name: str, rounds: int) -> list[dict]:
    from ddit_export.runtime.backends import get_backend

    options = {"cpu_threading": "pool"} if name == "onnx" else {}
    backends = {"single": get_backend(name, single, **options), "staged": get_backend(name, staged)}
    latent, cond = _inputs(backends["single"])
    sizes = backends["single"].patch_sizes
    times = {(lay, p): [] for lay in backends for p in sizes}
    outputs = {}
    for r in range(rounds + 1):
        for p in sizes:
            for lay, b in (backends.items() if r % 2 else reversed(backends.items())):
                start = time.perf_counter()
                outputs[lay, p] = b(p, latent, **cond)
                if r:  # the first round warms up
                    times[lay, p].append(time.perf_counter() - start)
    rows = []
    for p in sizes:
        a, b = outputs["single", p].flatten().double(), outputs["staged", p].flatten().double()
        ms = {lay: statistics.median(times[lay, p]) * 1e3 for lay in backends}  # median: the machine is shared
        best = {lay: min(times[lay, p]) * 1e3 for lay in backends}
        rows.append({"backend": name, "patch": p, "single_ms": round(ms["single"], 1),
                     "staged_ms": round(ms["staged"], 1),
                     "ratio_median": round(ms["staged"] / ms["single"], 3),
                     "ratio_best": round(best["staged"] / best["single"], 3),
                     "max_abs_err": float((a - b).abs().max()),
                     "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0))})
    for b in backends.values():
        b.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--single", required=True)
    ap.add_argument("--staged", required=True)
    ap.add_argument("--backends", default="onnx,torch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-backends", default="onnx")
    ap.add_argument("--memory-only", nargs=3, metavar=("FOLDER", "BACKEND", "SIZES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_only:
        folder, backend, sizes = args.memory_only
        print(json.dumps(memory(folder, backend, None if sizes == "all" else sizes)))
        return
    base = str(json.load(open(f"{args.single}/manifest.json"))["base_patch"])
    for backend in [b for b in args.backends.split(",") if b]:
        for folder, sizes in ((args.single, base), (args.single, "all"), (args.staged, "all")):
            cmd = [sys.executable, __file__, "--single", args.single, "--staged", args.staged,
                   "--memory-only", folder, backend, sizes]
            print(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip(), flush=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for backend in args.latency_backends.split(","):
        for row in latency_and_numerics(args.single, args.staged, backend, args.rounds):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
