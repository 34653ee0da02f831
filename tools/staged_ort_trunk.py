"""Measure how ONNX Runtime (CPU) should hold the staged layout's ONE trunk for every patch size.

Candidates, each loaded in a fresh process (RSS is then the candidate's own):
  dynamic           one graph with a symbolic token axis, one session (pre-packing on)
  dynamic-noprepack the same with `session.disable_prepacking`
  static-shared     one static graph per size, weights shared across sessions by `add_initializer`
                    (pre-packing off: it would copy every shared weight per session)
  static-shared-prepack  the same with pre-packing left on
  static-separate   one static graph per size, nothing shared (what separate engines cost)
Prints one JSON line per candidate: RSS after loading, and ms per trunk call per size (best of N,
sizes round-robin).

    python tools/staged_ort_trunk.py --model medium --height 512 --width 512 --work /tmp/trunks
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

CANDIDATES = ("dynamic", "dynamic-noprepack", "static-shared", "static-shared-prepack", "static-separate")


def export_all(args, work: Path) -> None:
    import numpy as np

    from ddit_export.ddit.model import DDiTModel
    from ddit_export.ddit.staged import build_staged, family_parts
    from ddit_export.export.onnx_export import export_onnx
    from ddit_export.export.staged.onnx_export import export_dynamic_trunk
    from ddit_export.families.registry import family_by_name

    fam = family_by_name(args.family)
    transformer = fam.load(args.model)
    sizes = [int(p) for p in args.sizes.split(",")]
    latent = fam.latent_shape(1, args.height, args.width, args.frames, fam.latent_channels_of(transformer.config))
    model = DDiTModel(fam, transformer, sizes).eval()
    staged = build_staged(model, latent, args.text_len)
    fp = family_parts(fam)
    work.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    feeds = {}
    with torch.no_grad():
        for p in sizes:
            given = {"latent": torch.randn(latent, generator=gen)}
            for name, shape in fam.condition_specs(transformer.config, 1, args.text_len):
                given[name] = torch.rand(shape, generator=gen) * (fam.timestep_scale if name == "timestep" else 1)
            given["size_index"] = staged.size_index(p)
            embed, names, outs = staged.part_callables(p)["embed"]
            values = dict(zip(outs, embed(**{n: given[n] for n in names})))
            values["size_index"] = given["size_index"]
            feeds[p] = {n: values[n] for n in fp.TRUNK_INPUTS}
            np.savez(work / f"feed_p{p}.npz", **{k: v.numpy() for k, v in feeds[p].items()})
        outputs = ["trunk_tokens", "block_residual"]
        export_dynamic_trunk(staged.trunk, feeds[sizes[0]], outputs, work / "trunk.onnx",
                             fp.trunk_token_axes(args.text_len), opset=20, external_data=None)
        for i, p in enumerate(sizes):
            static = _FixedSize(staged.trunk, i)  # traced for one size: only its adapter, the base none
            export_onnx(static, {k: v for k, v in feeds[p].items() if k != "size_index"}, outputs,
                        work / f"trunk_p{p}.onnx", opset=20)


class _FixedSize(torch.nn.Module):
    def __init__(self, trunk, index: int):
        super().__init__()
        self.trunk, self.index = trunk, index

    def forward(self, **inputs):
        return self.trunk(**inputs, size_index=self.index)


def measure(candidate: str, work: Path, sizes: list[int], rounds: int, threads: int) -> dict:
    import numpy as np
    import onnxruntime as ort
    import psutil

    from ddit_export.runtime.backends.ort_shared_weights import SharedWeights

    proc = psutil.Process()
    feeds = {p: dict(np.load(work / f"feed_p{p}.npz")) for p in sizes}
    before = proc.memory_info().rss

    def options(prepack: bool):
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.log_severity_level = 3
        if not prepack:
            o.add_session_config_entry("session.disable_prepacking", "1")
        return o

    if candidate.startswith("dynamic"):
        session = ort.InferenceSession(str(work / "trunk.onnx"), options("noprepack" not in candidate))
        sessions = {p: session for p in sizes}
    else:
        paths = {p: work / f"trunk_p{p}.onnx" for p in sizes}
        pool = SharedWeights(list(paths.values())) if "shared" in candidate else None
        sessions = {}
        for p, path in paths.items():
            o = options(candidate.endswith("prepack") or pool is None)
            if pool is not None:
                pool.apply(o, path, prepacking=candidate.endswith("prepack"))
            sessions[p] = ort.InferenceSession(str(path), o)
        for p in sizes:
            feeds[p].pop("size_index")
    loaded = proc.memory_info().rss
    best = {p: float("inf") for p in sizes}
    for r in range(rounds + 1):
        for p in sizes:
            start = time.perf_counter()
            sessions[p].run(None, feeds[p])
            if r:
                best[p] = min(best[p], time.perf_counter() - start)
    return {"candidate": candidate, "rss_load_mib": round((loaded - before) / 2**20, 1),
            "rss_after_runs_mib": round((proc.memory_info().rss - before) / 2**20, 1),
            "ms": {p: round(best[p] * 1e3, 1) for p in sizes}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="flux")
    ap.add_argument("--model", default="medium")
    ap.add_argument("--sizes", default="2,4,8")
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--frames", type=int)
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--work", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", help="measure one candidate in this process (used internally)")
    args = ap.parse_args()
    work, sizes = Path(args.work), [int(p) for p in args.sizes.split(",")]
    if args.only:
        print(json.dumps(measure(args.only, work, sizes, args.rounds, args.threads)))
        return
    if not (work / "trunk.onnx").exists():
        export_all(args, work)
    for candidate in CANDIDATES:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--only", candidate]
        print(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
