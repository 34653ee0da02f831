"""The demo's quality figures with 95% bootstrap intervals: accuracy, Frechet distance, PSNR, speed-up.

Every figure comes from the same N samples (seeds seed..seed+N-1, classes in turn) of the static base
and of one DDiT configuration; base and DDiT sample i share class and noise seed, so paired figures
(PSNR, the FD ratio, the speed-up) resample the pairs together (bench/bootstrap.py says how).

  accuracy_*       share of samples the demo classifier names as their class
  fd_*             Frechet distance of the classifier's penultimate features to REAL procedural images
                   (N generated against `real`; both resampled for the interval)
  fd_ratio         fd_ddit / fd_base (on the same resamples, so its interval is the ratio's own)
  fd_noise_floor   FD of the base against itself on two disjoint seed sets of N/2 samples, every class
                   split in half: the median (and 95% range) over 1000 random such splits
                   (bench/bootstrap.split_figure). What FD reads between two seed sets of one model, at this N.
  fd_ddit_vs_base  the same splits with DDiT on one half and the base on the other (both ways, averaged):
                   directly comparable with fd_noise_floor (same sizes, same disjoint seeds)
  psnr_db          DDiT against the base image by image: 10 log10(1 / mean MSE) over all N
"""

from __future__ import annotations

import numpy as np
import torch

from ..bench.bootstrap import bootstrap_ci, mean_ci, psnr_of_mse, split_figure
from ..bench.quality import frechet_distance

QUALITY_KEYS = ("accuracy_base", "accuracy_ddit", "fd_base", "fd_ddit", "fd_ratio", "fd_noise_floor",
                "fd_ddit_vs_base", "psnr_db", "speedup")


def halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index sets (even / odd sample index): disjoint seeds, classes balanced over 18 samples."""
    idx = np.arange(n)
    return idx[0::2], idx[1::2]


def per_sample_mse(images: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    return ((images.double() - reference.double()) ** 2).flatten(1).mean(1).numpy()


def accuracy_figures(correct_base, correct_ddit, **options) -> dict:
    out = {}
    for key, correct in (("accuracy_base", correct_base), ("accuracy_ddit", correct_ddit)):
        values = np.asarray(correct, dtype=float)
        out[key], out[f"{key}_ci"] = float(values.mean()), mean_ci(values, **options)
    return out


def fd_figures(feats_base, feats_ddit, real, labels=None, **options) -> dict:
    """FD of base and DDiT to the real set, their ratio, the noise floor and DDiT vs base across halves."""
    fb, fdd, fr = (np.asarray(torch.as_tensor(f).double().numpy()) for f in (feats_base, feats_ddit, real))
    n = len(fb)

    def to_real(i, j):
        base, ddit = frechet_distance(fb[i], fr[j]), frechet_distance(fdd[i], fr[j])
        return base, ddit, ddit / base if base > 0 else np.inf

    point = to_real(np.arange(n), np.arange(len(fr)))
    intervals = bootstrap_ci(to_real, (n, len(fr)), **options)
    a, b = halves(n)
    if min(len(a), len(b)) < 2:
        raise ValueError(f"the FD noise floor needs at least 4 samples (2 per seed half; got {n})")

    def floor(x, y):  # the base on one seed set against the base on another
        return frechet_distance(fb[x], fb[y])

    def across(x, y):  # DDiT on one half against the base on the other, both ways
        return (frechet_distance(fdd[x], fb[y]) + frechet_distance(fdd[y], fb[x])) / 2

    # between two disjoint sets of this run: median and range over random splits (bench/bootstrap.split_figure)
    floor_median, floor_ci = split_figure(floor, n, strata=labels, **options)
    across_median, across_ci = split_figure(across, n, strata=labels, **options)
    return {
        "fd_base": point[0], "fd_base_ci": intervals[0], "fd_ddit": point[1], "fd_ddit_ci": intervals[1],
        "fd_ratio": point[2], "fd_ratio_ci": intervals[2],
        "fd_noise_floor": floor_median, "fd_noise_floor_ci": floor_ci,
        "fd_ddit_vs_base": across_median, "fd_ddit_vs_base_ci": across_ci,
        "fd_halves_samples": [len(a), len(b)], "fd_real_samples": len(fr),
    }


def psnr_figures(images, reference, **options) -> dict:
    """PSNR of ``images`` against ``reference`` (same order: pairs) over the batch, with its interval."""
    mse = per_sample_mse(images, reference)
    return {"psnr_db": psnr_of_mse(float(mse.mean())),
            "psnr_db_ci": bootstrap_ci(lambda i: psnr_of_mse(float(mse[i].mean())), len(mse), **options)[0],
            "psnr_db_per_sample": [psnr_of_mse(float(m)) for m in mse]}


def speed_figures(seconds_base, seconds_ddit, **options) -> dict:
    """Mean time per image of each and the speed-up. Equal lengths: interleaved pairs, resampled together;
    else (base timed on a subset, tools/demo_quality_eval.py) each resampled on its own."""
    tb, td = np.asarray(seconds_base, dtype=float), np.asarray(seconds_ddit, dtype=float)
    if len(tb) == len(td):
        interval = bootstrap_ci(lambda i: tb[i].mean() / td[i].mean(), len(tb), **options)[0]
    else:
        interval = bootstrap_ci(lambda i, j: tb[i].mean() / td[j].mean(), (len(tb), len(td)), **options)[0]
    return {"seconds_per_image_base": float(tb.mean()), "seconds_per_image_ddit": float(td.mean()),
            "speedup": float(tb.mean() / td.mean()), "speedup_ci": interval,
            "timed_samples_base": len(tb), "timed_samples_ddit": len(td)}


def with_ci(value: float, ci, spec: str = ".2f", scale: float = 1.0, unit: str = "") -> str:
    """'84.2% [80.9, 87.3]'-style text of a figure and its interval."""
    if ci is None:
        return f"{scale * value:{spec}}{unit}"
    return f"{scale * value:{spec}}{unit} [{scale * ci[0]:{spec}}, {scale * ci[1]:{spec}}]"
