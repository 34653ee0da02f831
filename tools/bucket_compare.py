"""Resolution buckets side by side: one 3-bucket staged folder against one-bucket staged folders.

    python tools/bucket_compare.py --model medium --resolutions 512x512,384x672,672x384 --work W

- export: the bucketed folder, then one one-bucket folder per resolution, each `ddit-export flux` in its own
  process (wall seconds, peak RSS of the export process); an existing folder is kept and its time read back
  from the previous run's `export.json`.
- validation: every (bucket, size) chain's max|err| and cosine against PyTorch, as the export recorded them.
- memory: each folder loaded in a fresh process with the onnx backend; weight bytes held (bench/memory.py:
  distinct graphs, pooled weights once) and the RSS the load added. The bucketed folder is loaded at every
  bucket (one process, the chain shared), the one-bucket folder of the default resolution alone.
- latency: the bucketed folder (all buckets) and every one-bucket folder in ONE process, calls interleaved
  call by call (bucket, size, folder alternated, their order flipped every round), median ms per call.
Writes `W/bucket_compare.json` and prints the tables (markdown) for docs/buckets.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def export(args, out: Path, resolutions: str) -> dict:
    record = out / "export.json"
    if (out / "manifest.json").exists() and record.exists():
        return json.loads(record.read_text())
    # The CLI in a child that reports its own peak RSS on its last stderr line (ru_maxrss, KiB on Linux).
    runner = ("import resource, sys; from ddit_export.cli import main; code = main(sys.argv[1:]); "
              "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
              "sys.exit(code)")
    cmd = [sys.executable, "-c", runner, "flux", "--model", args.model, "--layout", "staged",
           "--patch-sizes", args.patch_sizes, "--resolutions", resolutions, "--backends", "onnx", "--force",
           "--out", str(out)]
    if args.text_len:
        cmd += ["--text-len", str(args.text_len)]
    started = time.perf_counter()
    done = subprocess.run(cmd, check=True, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    peak = int(done.stderr.strip().splitlines()[-1].split()[-1])
    result = {"resolutions": resolutions, "seconds": round(seconds, 1), "peak_rss_mib": round(peak / 1024, 1)}
    record.write_text(json.dumps(result))
    return result


def validation(folder: Path) -> list[dict]:
    from ddit_export.artifacts.manifest import read_manifest

    manifest = read_manifest(folder)
    rows = []
    for b in manifest.buckets:
        for e in manifest.at_bucket(b.height, b.width).engines_of("onnx").values():
            v = e["validation"]
            rows.append({"bucket": b.name, "patch": e["patch_size"], "tokens": e["tokens"],
                         "max_abs_err": v["max_abs_err"], "cosine": v["cosine"]})
    return rows


def memory(folder: str, buckets: str) -> dict:
    """In a fresh process (`--memory`): load `folder` at every bucket of `buckets` (HxW,HxW)."""
    from ddit_export.bench.memory import rss_bytes, weight_bytes
    from ddit_export.runtime.backends import get_backend

    torch.set_num_threads(1)
    before = rss_bytes()
    loaded = [get_backend("onnx", folder, bucket=tuple(int(n) for n in b.split("x"))) for b in buckets.split(",")]
    after = rss_bytes()
    return {"folder": folder, "buckets": buckets, "weight_bytes": weight_bytes(loaded[0]),
            "rss_load_bytes": after - before, "sessions": len(loaded[0].chain.sessions)}


def _memory_in_child(folder: Path, buckets: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory", str(folder), buckets], check=True, env=_env(),
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _inputs(backend, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cond = {t.name: torch.randn(t.shape, generator=gen) for t in backend.io_spec.inputs}
    cond["timestep"] = torch.full(cond["timestep"].shape, 0.6)
    return cond.pop("latent"), cond


def latency(bucketed: Path, singles: dict[str, Path], rounds: int) -> list[dict]:
    from ddit_export.runtime.backends import get_backend

    pairs = {}
    for name, folder in singles.items():
        h, w = (int(n) for n in name.split("x"))
        pairs[name] = {"bucketed": get_backend("onnx", bucketed, bucket=(h, w)),
                       "one-bucket": get_backend("onnx", folder)}
    inputs = {name: _inputs(pair["one-bucket"]) for name, pair in pairs.items()}
    sizes = pairs[next(iter(pairs))]["one-bucket"].patch_sizes
    times = {(n, p, k): [] for n in pairs for p in sizes for k in ("bucketed", "one-bucket")}
    for r in range(rounds + 1):  # round 0 warms every session up and is not counted
        for name, pair in pairs.items():
            latent, cond = inputs[name]
            for p in sizes:
                order = ("bucketed", "one-bucket") if r % 2 else ("one-bucket", "bucketed")
                for kind in order:
                    start = time.perf_counter()
                    pair[kind](p, latent, **cond)
                    if r:
                        times[name, p, kind].append((time.perf_counter() - start) * 1e3)
    rows = []
    for name in pairs:
        latent, cond = inputs[name]
        for p in sizes:
            a, b = times[name, p, "bucketed"], times[name, p, "one-bucket"]
            diff = (pairs[name]["bucketed"](p, latent, **cond) - pairs[name]["one-bucket"](p, latent, **cond)).abs()
            rows.append({"bucket": name, "patch": p, "bucketed_median_ms": round(statistics.median(a), 2),
                         "one_bucket_median_ms": round(statistics.median(b), 2),
                         "ratio_median": round(statistics.median(a) / statistics.median(b), 3),
                         "ratio_best": round(min(a) / min(b), 3), "rounds": rounds,
                         "max_abs_diff_vs_one_bucket": float(diff.max())})
    return rows


def markdown(report: dict) -> str:
    lines = ["| folder | export s (wall) | peak RSS MiB |", "|---|---|---|"]
    for name, e in report["export"].items():
        peak = e.get("peak_rss_mib", e.get("children_peak_rss_mib"))
        lines.append(f"| {name} | {e['seconds']:.1f} | {peak} |")
    singles = sum(e["seconds"] for n, e in report["export"].items() if n != "bucketed")
    lines.append(f"| three one-bucket exports together | {singles:.1f} |")
    lines += ["", "| folder | loaded at | weights MiB | RSS at load MiB | sessions |", "|---|---|---|---|---|"]
    for m in report["memory"]:
        lines.append(f"| {m['folder'].rsplit('/', 1)[-1]} | {m['buckets']} | {m['weight_bytes'] / 2**20:.1f} | "
                     f"{m['rss_load_bytes'] / 2**20:.1f} | {m['sessions']} |")
    lines += ["", "| bucket | P | bucketed median ms | one-bucket median ms | ratio (medians) | ratio (best) |",
              "|---|---|---|---|---|---|"]
    for r in report["latency"]:
        lines.append(f"| {r['bucket']} | {r['patch']} | {r['bucketed_median_ms']:.1f} | "
                     f"{r['one_bucket_median_ms']:.1f} | {r['ratio_median']:.3f} | {r['ratio_best']:.3f} |")
    lines += ["", "| bucket | P | tokens | max\\|err\\| vs PyTorch | cosine |", "|---|---|---|---|---|"]
    for v in report["validation"]:
        lines.append(f"| {v['bucket']} | {v['patch']} | {v['tokens']} | {v['max_abs_err']:.1e} | {v['cosine']:.8f} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory":
        print(json.dumps(memory(sys.argv[2], sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="medium")
    parser.add_argument("--resolutions", default="512x512,384x672,672x384")
    parser.add_argument("--patch-sizes", default="2,4,8")
    parser.add_argument("--text-len", type=int)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--work", required=True)
    parser.add_argument("--skip", default="", help="comma list of phases to skip: memory, latency")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    names = args.resolutions.split(",")
    bucketed = work / "bucketed"
    singles = {n: work / f"one-{n}" for n in names}
    report = {"model": args.model, "resolutions": names, "patch_sizes": args.patch_sizes,
              "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    report["export"] = {"bucketed": export(args, bucketed, args.resolutions)}
    for n, folder in singles.items():
        report["export"][f"one-{n}"] = export(args, folder, n)
    report["validation"] = validation(bucketed)
    if "memory" not in args.skip:
        report["memory"] = [_memory_in_child(bucketed, args.resolutions), _memory_in_child(bucketed, names[0]),
                            _memory_in_child(singles[names[0]], names[0])]
    if "latency" not in args.skip:
        torch.set_num_threads(1)
        report["latency"] = latency(bucketed, singles, args.rounds)
    report["load_average_at_end"] = os.getloadavg()
    (work / "bucket_compare.json").write_text(json.dumps(report, indent=2))
    print(markdown({**{"memory": [], "latency": []}, **report}))


if __name__ == "__main__":
    main()
