"""How much of the base's fine detail DDiT's demo images keep: power per spatial-frequency band, DDiT over base.

    python tools/demo_spectrum.py [ENGINE_DIR] [--samples 90] [--seed 50000] [--steps 28] [--sizes 2,4]
        [--fixed SPEC ...] [--json FILE]

Sample i (class i mod 9, noise seed seed + i) runs with the static base, the dynamic rule (the manifest's,
with --sizes if given) and each --fixed schedule. Each decoded image's radially averaged power spectrum
(`ddit_export/train/spectrum.py`, the one `train --spectral-weight` trains on) is summed per band of rings
(four equal bands, lowest to highest frequency); a row's figure per band is its total power over the base's
on the same seeds, with a 95% bootstrap interval over samples. 1.00 = as much detail as the base; the
coarse sizes' velocity MSE training loses it at the top (docs/quality.md, "The spectral term").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ddit_export.commands import argtypes
from ddit_export.commands.arglists import patch_list
from ddit_export.demo.engines import DEFAULT_ENGINE_DIR

BANDS = 4
RESAMPLES = 1000


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine_dir", nargs="?", default=str(DEFAULT_ENGINE_DIR))
    p.add_argument("--samples", "-n", type=argtypes.positive_int, default=90)
    p.add_argument("--seed", type=argtypes.seed, default=50000, help="seed of the first sample (default 50000)")
    p.add_argument("--steps", type=argtypes.steps, default=28)
    p.add_argument("--sizes", type=patch_list, help="sizes the rule may pick (default: the manifest's)")
    p.add_argument("--fixed", action="append", metavar="SPEC", default=[], help="also this fixed schedule (repeat)")
    p.add_argument("--json", help="also write every row's band ratios and intervals here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from ddit_export.commands.errors import run_guarded

    return run_guarded(lambda: measure(parse_args(argv)))


def band_powers(images, bands: int = BANDS):
    """[N, C, H, W] images -> [N, bands]: summed radial power of each band of rings."""
    from ddit_export.train.spectrum import radial_power

    rings = radial_power(images)
    edges = [round(i * rings.shape[1] / bands) for i in range(bands + 1)]
    return rings.new_tensor([[float(r[lo:hi].sum()) for lo, hi in zip(edges, edges[1:])] for r in rings])


def ratio_with_interval(powers, base, seed: int = 0):
    """Total power over the base's per band, and its 95% percentile interval over resampled samples."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, powers.shape[0], (RESAMPLES, powers.shape[0]), generator=gen)
    resampled = powers[rows].sum(1) / base[rows].sum(1)
    lo, hi = resampled.quantile(torch.tensor([0.025, 0.975], dtype=resampled.dtype), dim=0)
    return (powers.sum(0) / base.sum(0)).tolist(), lo.tolist(), hi.tolist()


def measure(args) -> int:
    import torch
    from tqdm import tqdm

    from ddit_export.demo.engines import DEMO_PATCH_SIZES, demo_engine_folder
    from ddit_export.pipelines.demo.class_table import demo_conditioning
    from ddit_export.pipelines.demo.classes import CLASS_NAMES
    from ddit_export.pipelines.demo.codec import decode
    from ddit_export.pipelines.registry import generate
    from ddit_export.runtime.backends import get_backend
    from ddit_export.runtime.runner import schedule_config
    from ddit_export.runtime.schedule_spec import check_schedule, parse_schedule
    from ddit_export.util.atomic import check_writable, write_text_atomic

    fixed = {f"fixed {spec}": parse_schedule(spec, flag="--fixed") for spec in args.fixed}
    for schedule in fixed.values():  # before any sampling
        check_schedule(schedule, DEMO_PATCH_SIZES, args.steps, flag="--fixed")
    out = Path(args.json).expanduser() if args.json else None
    if out is not None:
        check_writable(out.parent, "--json's folder")
    folder = demo_engine_folder(args.engine_dir)
    powers = {}
    with get_backend("onnx", folder) as backend:
        configs = {"base": schedule_config(backend, schedule=(backend.base_patch,) * args.steps),
                   "rule": schedule_config(backend, patch_sizes=tuple(args.sizes) if args.sizes else None)}
        configs |= {name: schedule_config(backend, schedule=s) for name, s in fixed.items()}
        for name, config in configs.items():
            images = []
            for i in tqdm(range(args.samples), desc=name, unit="sample", leave=False):
                cond = demo_conditioning(CLASS_NAMES[i % len(CLASS_NAMES)])
                result = generate(backend, cond, config, steps=args.steps, seed=args.seed + i)
                with torch.no_grad():
                    images.append(decode(result.latent.float()))
            powers[name] = band_powers(torch.cat(images))
    print(f"power per frequency band over the base's (low -> high), {args.samples} samples "
          f"(seeds {args.seed}-{args.seed + args.samples - 1}), 95% intervals over samples")
    rows = {}
    for name, power in powers.items():
        if name == "base":
            continue
        ratio, lo, hi = ratio_with_interval(power, powers["base"])
        rows[name] = {"ratio": ratio, "ci_low": lo, "ci_high": hi}
        print(f"  {name:24s} " + "  ".join(f"{r:.3f} [{a:.3f}, {b:.3f}]" for r, a, b in zip(ratio, lo, hi)))
    if out is not None:
        write_text_atomic(out, json.dumps({"samples": args.samples, "seed": args.seed, "steps": args.steps,
                                           "bands": BANDS, "rows": rows}, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
