"""The demo's pictures: a base-vs-DDiT sample grid and the per-step schedule plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..pipelines.demo.classes import CLASS_NAMES
from ..pipelines.demo.codec import to_pil


def write_grid(base: list[torch.Tensor], ddit: list[torch.Tensor], labels, path: Path, scale: int = 4) -> Path:
    """One row per sample: base | DDiT side by side, upscaled (nearest) so pixels stay visible."""
    gap = torch.ones(3, base[0].shape[1], 2)
    rows = [torch.cat([b, gap, d], dim=2) for b, d in zip(base, ddit)]
    # Two columns of pairs keep the picture roughly square for 16 samples.
    cols = 2 if len(rows) > 4 else 1
    rows += [torch.ones_like(rows[0])] * (-len(rows) % cols)
    sep = torch.ones(3, rows[0].shape[1], 6)
    lines = [torch.cat([x for r in rows[i : i + cols] for x in (r, sep)][:-1], dim=2)
             for i in range(0, len(rows), cols)]
    grid = torch.cat([x for line in lines for x in (line, torch.ones(3, 2, line.shape[2]))][:-1], dim=1)
    to_pil(grid, scale).save(path)
    return path


def write_schedule_plot(schedules: list[list[int]], labels, sizes, tau: float, path: Path,
                        cached: list[list[bool]] | None = None) -> Path:
    """Patch size per step (one line per sample) and how often each size ran; with `cached`, the steps
    served from the step cache are marked (open circles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [3, 1]})
    for i, schedule in enumerate(schedules):
        jitter = (i - len(schedules) / 2) * 0.04  # overlapping lines stay distinguishable
        left.step(range(len(schedule)), np.array(schedule) + jitter, where="mid", alpha=0.6, lw=1,
                  label=CLASS_NAMES[int(labels[i])] if i < len(CLASS_NAMES) else None)
        if cached is not None:
            hits = [k for k, c in enumerate(cached[i]) if c]
            left.scatter(hits, np.array(schedule)[hits] + jitter, s=14, facecolors="none", edgecolors="k", lw=0.6,
                         label="cached step" if i == 0 and hits else None)
    left.set_yticks(list(sizes))
    left.set_xlabel("denoising step")
    left.set_ylabel("patch size (latent px)")
    left.set_title(f"DDiT schedule per sample (tau {tau:g})" + (", o = cached" if cached is not None else ""))
    left.legend(fontsize=7, loc="upper right")
    flat = [p for s in schedules for p in s]
    right.bar([str(p) for p in sizes], [flat.count(p) for p in sizes], color="tab:blue")
    right.set_xlabel("patch size")
    right.set_title("steps per size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
