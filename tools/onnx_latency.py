"""Print ONNX Runtime latency per patch size of an engine folder (side by side, one run).

    python tools/onnx_latency.py ENGINE_DIR [--warmup 3] [--iters 10] [--json FILE]
"""

import argparse
import json

from ddit_export.bench.onnx_latency import onnx_latency

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("engine_dir")
parser.add_argument("--warmup", type=int, default=3)
parser.add_argument("--iters", type=int, default=10)
parser.add_argument("--json")
args = parser.parse_args()
report = onnx_latency(args.engine_dir, args.warmup, args.iters)
print(f"latent {report['latent_shape']}, text tokens {report['text_len']}, {report['providers'][0]}")
print(f"{'patch':>5} {'tokens':>7} {'mean ms':>9} {'p50 ms':>9} {'p95 ms':>9} {'t(base)/t':>10}")
for patch, r in report["sizes"].items():
    print(f"{patch:>5} {r['tokens']:>7} {r['mean_ms']:>9.2f} {r['p50_ms']:>9.2f} {r['p95_ms']:>9.2f} "
          f"{r['speedup_vs_base']:>10.2f}")
if args.json:
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=2)
