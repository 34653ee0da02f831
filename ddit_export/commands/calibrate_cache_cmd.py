"""`ddit-export calibrate ENGINE_DIR --cache`: fit TeaCache's polynomial and store it in the manifest.

Writes `cache_fit.json` (the fit and every step pair) into --out; the manifest is rewritten atomically
(`--dry-run` leaves it). The folder must be staged (the trunk returns the residual the fit measures).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from ..util import limits
from ..util.atomic import check_writable
from .arglists import at_bucket, comma_list, read_engine_folder
from .bench_cmd import check_device
from .progress import Counted
from .prompts import prompts_for


def calibrate_cache_command(args: argparse.Namespace, console: Console) -> int:
    from ..bench import report
    from ..bench.cache_fit import collect_pairs, fit_polynomial, store_cache_fit
    from ..pipelines import pipeline_for
    from ..runtime.backends import get_backend
    from ..runtime.cache import require_staged

    seeds = comma_list(args.seeds, "--seeds", check=limits.check_seed)
    if args.steps < 3:
        raise ValueError(f"--cache needs at least 3 steps per trajectory (got {args.steps})")
    folder, manifest = read_engine_folder(args.engine_dir)
    manifest, bucket = at_bucket(manifest, args.height, args.width)  # fitted per resolution bucket
    device = check_device(args.device)
    out = Path(args.out).expanduser() if args.out else Path("outputs") / f"calibrate-cache-{folder.resolve().name}"
    check_writable(out)
    prompts = prompts_for(args.prompt, manifest)
    pipeline = pipeline_for(manifest)
    with get_backend(args.backend, folder, device=device, bucket=bucket, manifest=manifest) as backend:
        require_staged(backend)
        conds = [pipeline.conditioning(manifest, p, device=device) for p in prompts]
        runs = len(backend.patch_sizes) * len(conds) * len(seeds)
        console.print(f"fitting TeaCache's polynomial: {runs} static trajectories ({len(backend.patch_sizes)} sizes x "
                      f"{len(conds)} prompts x {len(seeds)} seeds), {args.steps} steps, backend {args.backend}")
        with Counted(console, runs, "sampling", unit="run") as bar:
            pairs = collect_pairs(backend, conds, seeds, args.steps,
                                  progress=lambda done, of: bar.update(done, of, status=""))
    fit = fit_polynomial(pairs)
    record = {**fit, "signal": {"flux": "block 0 norm1(tokens, temb)", "wan": "timestep embedding"}.get(
        manifest["family"]), "steps": args.steps, "seeds": seeds, "prompts": prompts, "backend": args.backend,
        "sizes": [int(p) for p in manifest["patch_sizes"]]}
    out.mkdir(parents=True, exist_ok=True)
    path = report.write_json(out / "cache_fit.json", {"engine_dir": str(folder), **record,
                                                      "step_pairs": [vars(p) for p in pairs]})
    poly = ", ".join(f"{c:.6g}" for c in fit["coefficients"])
    console.print(f"TeaCache polynomial (highest degree first): {poly}; R^2 {fit['r2']:.3f} over {fit['pairs']} "
                  f"step pairs, signal change {fit['x_range'][0]:.3g}..{fit['x_range'][1]:.3g}")
    console.print(f"wrote {path}")
    if args.dry_run:
        console.print("--dry-run: manifest unchanged")
    else:
        store_cache_fit(folder, manifest, record)
        console.print(f"stored as cache.teacache in {folder / 'manifest.json'}")
    return 0
