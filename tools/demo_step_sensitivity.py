"""What ONE coarse step at step k does to the demo's final image: where in sampling a coarse step costs most.

    python tools/demo_step_sensitivity.py [ENGINE_DIR] [--size 4] [--samples 18] [--seed 0] [--steps 28]
        [--json FILE]

For each sample (classes in turn, noise seed seed + i) the static base runs once, then once per step k with
that one step at --size and every other step at the base. Per k, averaged over the samples:
  step_err       RMS latent difference right after step k (the error the coarse step made)
  final_latent   RMS difference of the final latents (that error after the remaining steps)
  amplification  final_latent / step_err
  features       L2 distance of the demo classifier's features of the two final images
  features/err   features per unit of step_err: how much a unit of step error moves what the classifier sees
  bias           L2 norm of the MEAN feature difference over the samples: the part of the move every sample
                 shares, which is what shifts a distribution (FD); a per-sample move in random directions
                 mostly makes another plausible sample (noise level of this column: features / sqrt(N))
The predicted-error rule (docs/method.md) weighs every step's predicted latent error alike; this says how
far that is from what the final image, and its classifier, see (docs/quality.md has the measured table).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ddit_export.commands import argtypes
from ddit_export.demo.engines import DEFAULT_ENGINE_DIR


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine_dir", nargs="?", default=str(DEFAULT_ENGINE_DIR))
    p.add_argument("--size", type=argtypes.positive_int, default=4, help="the coarse size of the probed step")
    p.add_argument("--samples", "-n", type=argtypes.positive_int, default=18)
    p.add_argument("--seed", type=argtypes.seed, default=0, help="seed of the first sample (default 0)")
    p.add_argument("--steps", type=argtypes.steps, default=28)
    p.add_argument("--json", help="also write every per-sample, per-step figure here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from ddit_export.commands.errors import run_guarded

    return run_guarded(lambda: probe(parse_args(argv)))


def probe(args) -> int:
    import torch
    from tqdm import tqdm

    from ddit_export.demo.classifier import load_classifier
    from ddit_export.demo.engines import demo_engine_folder
    from ddit_export.pipelines.demo.class_table import demo_conditioning
    from ddit_export.pipelines.demo.classes import CLASS_NAMES
    from ddit_export.pipelines.demo.codec import decode
    from ddit_export.pipelines.registry import generate
    from ddit_export.runtime.backends import get_backend
    from ddit_export.runtime.runner import schedule_config
    from ddit_export.util.atomic import check_writable, write_text_atomic

    out = Path(args.json).expanduser() if args.json else None
    if out is not None:
        check_writable(out.parent, "--json's folder")
    folder = demo_engine_folder(args.engine_dir)
    classifier = load_classifier()
    rows = []
    with get_backend("onnx", folder) as backend:
        if args.size not in backend.patch_sizes or args.size == backend.base_patch:
            raise ValueError(f"--size {args.size}: give a coarse size of these engines "
                             f"({[p for p in backend.patch_sizes if p != backend.base_patch]})")
        base_patch = backend.base_patch

        def run(schedule, cond, seed):
            result = generate(backend, cond, schedule_config(backend, schedule=tuple(schedule)), steps=args.steps,
                              seed=seed, return_trajectory=True)
            with torch.no_grad():
                return result, classifier.features(decode(result.latent.float()))

        for i in tqdm(range(args.samples), desc=f"one step at size {args.size}", unit="sample"):
            cond, seed = demo_conditioning(CLASS_NAMES[i % len(CLASS_NAMES)]), args.seed + i
            base, base_features = run([base_patch] * args.steps, cond, seed)
            for k in range(args.steps):
                schedule = [base_patch] * args.steps
                schedule[k] = args.size
                probed, features = run(schedule, cond, seed)
                rows.append({"sample": i, "seed": seed, "step": k,
                             "step_err": _rms(probed.trajectory[k + 1] - base.trajectory[k + 1]),
                             "final_latent": _rms(probed.latent - base.latent),
                             "features": float((features - base_features).norm()),
                             "feature_shift": (features - base_features).flatten().tolist()})
    print(f"one step at size {args.size}, every other at the base; mean over {args.samples} samples "
          f"(seeds {args.seed}-{args.seed + args.samples - 1}), {args.steps} steps")
    print(" step  step_err  final_latent  amplification  features  features/err    bias")
    for k in range(args.steps):
        at = [r for r in rows if r["step"] == k]
        err, final, feats = (sum(r[key] for r in at) / len(at) for key in ("step_err", "final_latent", "features"))
        bias = float(torch.tensor([r["feature_shift"] for r in at]).mean(0).norm())
        print(f"{k:5d}  {err:8.4f}  {final:12.4f}  {final / err:13.2f}  {feats:8.3f}  {feats / err:12.1f}  {bias:6.3f}")
    if out is not None:
        write_text_atomic(out, json.dumps({"size": args.size, "samples": args.samples, "seed": args.seed,
                                           "steps": args.steps, "rows": rows}, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


def _rms(x) -> float:
    return float(x.float().pow(2).mean().sqrt())


if __name__ == "__main__":
    sys.exit(main())
