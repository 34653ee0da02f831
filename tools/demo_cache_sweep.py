"""Sweep DDiT's tau and the step cache's threshold together on the demo: one base run, every pair interleaved.

    python tools/demo_cache_sweep.py --taus 1e-4,5e-5 --caches teacache:0.25,teacache:0.4 [--samples 48]
        [--seed 2000] [--rule predicted-error] [--policies observe,hold] [--json FILE]

Configurations: cache alone per threshold (the base size every step), DDiT alone per tau, and DDiT + cache
per (tau, threshold). Per sample the static base runs first and every configuration right after it on the
same seed (the demo's `sample_runs`), so a shared machine's drift hits all alike; compare ratios only.
Uses the demo's staged engines (engines/demo-staged) and their stored TeaCache fit.
"""

import argparse
import json

from ddit_export.demo.classifier import load_classifier
from ddit_export.demo.engines import DEFAULT_STAGED_DIR, export_demo_engines
from ddit_export.demo.evaluate import figures, real_features, sample_labels, sample_runs, warm_up
from ddit_export.runtime.backends import get_backend
from ddit_export.runtime.cache import StepCache, parse_cache
from ddit_export.runtime.runner import schedule_config

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--taus", default="1e-4")
parser.add_argument("--caches", default="teacache:0.25")
parser.add_argument("--samples", type=int, default=48)
parser.add_argument("--steps", type=int, default=28)
parser.add_argument("--seed", type=int, default=2000)
parser.add_argument("--rule", default="predicted-error")
parser.add_argument("--policies", default="observe",
                    help="observe,hold: the scheduler after a cached step (StepCache schedule=)")
parser.add_argument("--warmup-steps", default="0", help="0,4: steps that always run (StepCache warmup_steps=)")
parser.add_argument("--no-alone", action="store_true", help="skip the cache-alone configurations")
parser.add_argument("--engines", default=str(DEFAULT_STAGED_DIR))
parser.add_argument("--first-block-split", action="store_true",
                    help="export (or reuse) --engines with the trunk split after block 0: fbcache on ONNX Runtime")
parser.add_argument("--json")
args = parser.parse_args()
taus = [float(t) for t in args.taus.split(",")]
specs = [parse_cache(c) for c in args.caches.split(",")]

manifest = export_demo_engines(args.engines, layout="staged", first_block_split=args.first_block_split)
labels = sample_labels(args.samples)
with get_backend("onnx", args.engines) as backend:
    warm_up(backend)
    static = schedule_config(backend, static_patch=backend.base_patch)
    configs = {}
    for spec in specs:
        if not args.no_alone:
            configs[f"{spec} alone"] = (static, StepCache(backend, spec))
    for tau in taus:
        ddit = schedule_config(backend, tau=tau, rule=args.rule)
        configs[f"DDiT {tau:g}"] = ddit
        for spec in specs:
            for policy in args.policies.split(","):
                for warm in args.warmup_steps.split(","):
                    configs[f"DDiT {tau:g} + {spec} {policy} w{warm}"] = (
                        ddit, StepCache(backend, spec, schedule=policy, warmup_steps=int(warm)))
    base, runs = sample_runs(backend, args.samples, args.steps, args.seed, configs)
tokens = {int(e["patch_size"]): int(e["tokens"]) for e in manifest["engines"]}
classifier = load_classifier()
real = real_features(classifier)
rows = {}
t_base = sum(base.seconds) / len(base.seconds)
print(f"{args.samples} samples from seed {args.seed}, {args.steps} steps, rule {args.rule}, policies {args.policies}; "
      f"base {t_base:.4f} s/image")
print(f"{'configuration':<40} {'s/img':>7} {'speed-up':>8} {'cost':>6} {'cached':>7} {'PSNR':>6} {'SSIM':>6} "
      f"{'acc':>6} {'acc base':>8}")
for key, run in runs.items():
    r = figures(base, run, labels, classifier, real, manifest["patch_sizes"], tokens)
    r["cached_steps"] = run.cached_share
    rows[key] = {k: v for k, v in r.items() if k not in ("schedules", "psnr_db_per_sample")}
    print(f"{key:<40} {r['seconds_per_image_ddit']:>7.4f} {r['speedup']:>7.2f}x {r['token_cost']:>6.3f} "
          f"{100 * r['cached_steps']:>6.0f}% {r['psnr_db']:>6.2f} {r['ssim']:>6.3f} {100 * r['accuracy_ddit']:>5.1f}% "
          f"{100 * r['accuracy_base']:>7.1f}%")
if args.json:
    with open(args.json, "w") as fh:
        json.dump({"samples": args.samples, "seed": args.seed, "steps": args.steps, "rule": args.rule,
                   "policies": args.policies, "seconds_per_image_base": t_base, "configurations": rows},
                  fh, indent=1, default=float)
