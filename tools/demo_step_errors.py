"""Per step of the demo's static-base trajectories: the scheduler's statistic against the jump a coarse step causes.

    python tools/demo_step_errors.py [--samples 12] [--steps 28] [--engines DIR] [--json FILE]

Why a schedule does or does not stay coarse. For each step k of base-only trajectories it prints
  stat(P)   the statistic the scheduler compares with tau (rho-quantile of P x P block stds of the
            third difference d3 of the sampler latents), as measured on the base trajectory;
  mse(P)    the coarse engine's velocity error against the base engine on the same latent;
  jump(P)   the same rho-quantile statistic of dt_k * (v_P - v_base): the change of d3 that running
            step k at size P instead of the base causes. d3 at steps k+1..k+3 moves by +1, -2, +1
            times this, so a size can only be held on consecutive steps where tau > stat + 2 jump;
            where jump exceeds the statistic everywhere, every coarse step forces base steps after it.
"""

import argparse
import json

import torch

from ddit_export.demo.engines import DEFAULT_ENGINE_DIR, export_demo_engines
from ddit_export.pipelines.demo.class_table import demo_conditioning
from ddit_export.pipelines.demo.classes import CLASS_NAMES
from ddit_export.pipelines.registry import generate
from ddit_export.runtime.backends import get_backend
from ddit_export.runtime.runner import schedule_config
from ddit_export.runtime.scheduler import block_statistics

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--samples", type=int, default=12)
parser.add_argument("--steps", type=int, default=28)
parser.add_argument("--rho", type=float, default=0.4)
parser.add_argument("--engines", default=str(DEFAULT_ENGINE_DIR))
parser.add_argument("--json")
args = parser.parse_args()

manifest = export_demo_engines(args.engines)
sizes = manifest["patch_sizes"]
coarse = [p for p in sizes if p != manifest["base_patch"]]
rows = torch.zeros(args.steps, 1 + 2 * len(coarse))  # stat, then (mse, jump) per coarse size
with get_backend("onnx", args.engines) as backend:
    static = schedule_config(backend, static_patch=backend.base_patch)
    for i in range(args.samples):
        cond = demo_conditioning(CLASS_NAMES[i % len(CLASS_NAMES)])
        run = generate(backend, cond, static, steps=args.steps, seed=i, return_trajectory=True)
        feeds = cond.engine_inputs(backend.io_spec, backend.device, backend.dtype)
        sigmas = torch.cat([run.timesteps / 1000, torch.zeros(1)])
        z = run.trajectory
        for k in range(args.steps):
            feeds["timestep"] = (run.timesteps[k] / 1000).reshape(1).to(backend.dtype)
            base = backend(backend.base_patch, z[k], **feeds)
            dt = (sigmas[k] - sigmas[k + 1]).item()
            if k >= 3:
                d3 = z[k] - 3 * z[k - 1] + 3 * z[k - 2] - z[k - 3]
                rows[k, 0] += block_statistics(d3, [coarse[-1]], args.rho)[0] / args.samples
            for j, p in enumerate(coarse):
                delta = backend(p, z[k], **feeds) - base
                rows[k, 1 + 2 * j] += delta.square().mean() / args.samples
                rows[k, 2 + 2 * j] += block_statistics(dt * delta, [p], args.rho)[0] / args.samples

header = f"{'step':>4} {'sigma':>6} {'stat':>8}" + "".join(f" {'mse p' + str(p):>9} {'jump p' + str(p):>9}"
                                                           for p in coarse)
print(f"{args.samples} base trajectories, {args.steps} steps, rho {args.rho}; stat is the p{coarse[-1]} statistic")
print(header)
table = []
for k in range(args.steps):
    sigma = (run.timesteps[k] / 1000).item()
    cells = {"step": k, "sigma": sigma, "stat": rows[k, 0].item()}
    line = f"{k:>4} {sigma:>6.3f} {rows[k, 0].item():>8.5f}"
    for j, p in enumerate(coarse):
        cells[f"mse_p{p}"], cells[f"jump_p{p}"] = rows[k, 1 + 2 * j].item(), rows[k, 2 + 2 * j].item()
        line += f" {cells[f'mse_p{p}']:>9.4f} {cells[f'jump_p{p}']:>9.5f}"
    print(line)
    table.append(cells)
if args.json:
    with open(args.json, "w") as fh:
        json.dump({"samples": args.samples, "steps": args.steps, "rho": args.rho, "rows": table}, fh, indent=1)
