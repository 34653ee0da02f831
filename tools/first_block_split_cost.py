"""Latency cost of running a staged trunk split after block 0 (first-block caching) vs in one call.

    python tools/first_block_split_cost.py ENGINE_DIR [--backend torch] [--rounds 30]

Per size: median ms of the whole trunk vs block 0 then blocks 1..N on the same values, rounds alternated.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ddit_export.pipelines import make_conditioning
from ddit_export.runtime.backends import get_backend


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("engine_dir")
    p.add_argument("--backend", default="torch")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--prompt", default="red circle")
    args = p.parse_args()
    torch.set_num_threads(1)
    with get_backend(args.backend, args.engine_dir) as b:
        cond = make_conditioning(b.manifest, args.prompt).engine_inputs(b.io_spec, b.device, b.dtype)
        latent = torch.randn(b.latent_shape)
        t = torch.full((b.latent_shape[0],), 0.5)
        for patch in b.patch_sizes:
            values = b.run_embed(patch, latent, timestep=t, **cond)
            whole, split = [], []
            for _ in range(args.rounds):
                s = time.perf_counter()
                b.run_trunk(patch, values)
                whole.append(time.perf_counter() - s)
                s = time.perf_counter()
                b.run_other_blocks(patch, b.run_first_block(patch, values))
                split.append(time.perf_counter() - s)
            w, sp = statistics.median(whole) * 1e3, statistics.median(split) * 1e3
            print(f"p{patch}: trunk {w:.3f} ms, block 0 + blocks 1..N {sp:.3f} ms, split/whole {sp / w:.3f}")


if __name__ == "__main__":
    main()
