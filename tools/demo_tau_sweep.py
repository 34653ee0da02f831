"""Sweep the DDiT threshold tau on the demo model: speed-up, PSNR vs base and accuracy per tau.

    python tools/demo_tau_sweep.py [--taus 0.01,0.02,0.05,0.1] [--samples 12] [--steps 28] [--sizes 2,4,8]
        [--settle-steps N] [--rule paper] [--json FILE]

Uses the demo's own pieces (export, sampling, scoring); the base samples are drawn once and each tau
runs right after them on the same sample, so timings share the machine's state.
"""

import argparse
import json

from ddit_export.demo.classifier import load_classifier
from ddit_export.demo.engines import DEFAULT_ENGINE_DIR, export_demo_engines
from ddit_export.demo.evaluate import figures, real_features, sample_labels, sample_runs, warm_up
from ddit_export.runtime.backends import get_backend
from ddit_export.runtime.runner import schedule_config

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--taus", default="0.01,0.02,0.05,0.1")
parser.add_argument("--samples", type=int, default=12)
parser.add_argument("--steps", type=int, default=28)
parser.add_argument("--engines", default=str(DEFAULT_ENGINE_DIR))
parser.add_argument("--settle-steps", type=int, default=0)
parser.add_argument("--sizes", default="2,4,8", help="patch sizes DDiT may pick (the demo's default is 2,4)")
parser.add_argument("--rule", default="paper", help="dynamic rule (ddit_export.runtime.scheduler.RULES)")
parser.add_argument("--json")
args = parser.parse_args()
taus = [float(t) for t in args.taus.split(",")]

manifest = export_demo_engines(args.engines)
labels = sample_labels(args.samples)
with get_backend("onnx", args.engines) as backend:
    warm_up(backend)
    sizes = tuple(int(p) for p in args.sizes.split(","))
    configs = {tau: schedule_config(backend, tau=tau, settle_steps=args.settle_steps, patch_sizes=sizes, rule=args.rule)
               for tau in taus}
    base, runs = sample_runs(backend, args.samples, args.steps, 0, configs)
tokens = {int(e["patch_size"]): int(e["tokens"]) for e in manifest["engines"]}
classifier = load_classifier()
real = real_features(classifier)
rows = {}
print(f"{args.samples} samples, {args.steps} steps; base {sum(base.seconds) / len(base.seconds):.3f} s/image")
print(f"{'tau':>8} {'speed-up':>9} {'PSNR dB':>8} {'min PSNR':>9} {'acc base':>9} {'acc DDiT':>9} {'FD base':>8} "
      f"{'FD DDiT':>8}  steps p2/p4/p8")
for tau, run in runs.items():
    r = figures(base, run, labels, classifier, real, manifest["patch_sizes"], tokens)
    rows[tau] = {k: v for k, v in r.items() if k != "schedules"}
    hist = "/".join(str(v) for v in r["schedule_histogram"].values())
    print(f"{tau:>8g} {r['speedup']:>8.2f}x {r['psnr_db']:>8.2f} {min(r['psnr_db_per_sample']):>9.2f} "
          f"{r['accuracy_base']:>9.3f} {r['accuracy_ddit']:>9.3f} {r['fd_base']:>8.3f} {r['fd_ddit']:>8.3f}  {hist}")
    print(f"{'':>8} first sample's schedule: {''.join(str(p) for p in r['schedules'][0])}")
if args.json:
    with open(args.json, "w") as fh:
        json.dump({"samples": args.samples, "steps": args.steps, "taus": rows}, fh, indent=1, default=float)
