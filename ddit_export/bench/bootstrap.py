"""95% bootstrap intervals for the quality figures (accuracy, Frechet distance, PSNR, speed-up).

How: resample the samples (rows; in the demo one row is one seed) with replacement, recompute the
figure on each resample, and take the bias-corrected percentile interval (Efron's BC): the percentiles
are shifted by z0 = Phi^-1(share of resampled figures below the point estimate). The plain percentile
interval is not enough for Frechet distance: a resample repeats rows, which pushes every resampled FD
up, so the plain interval can lie entirely above the estimate; BC recentres it (and for an unbiased
figure such as a mean it is the plain percentile interval up to resampling noise).

Several groups (e.g. generated images and the real reference set) are resampled independently; a
paired figure (DDiT against the base, on the same seeds) passes both through one group, so a pair is
kept together. The resampling generator is seeded: the same data give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0


def bootstrap_ci(statistic: Callable[..., float | Sequence[float]], sizes: int | Sequence[int], *,
                 resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED) -> list[list[float]]:
    """Intervals [lo, hi] of ``statistic(*index_arrays)`` for groups of ``sizes`` rows.

    ``statistic`` gets one index array per group (the identity for the point estimate) and returns one
    figure or several (all computed on the same resamples: intervals of figures that share data, such as
    FD base, FD DDiT and their ratio, come from one set of resamples). Returns one [lo, hi] per figure.
    """
    sizes = [sizes] if isinstance(sizes, int) else list(sizes)
    if any(n < 1 for n in sizes) or resamples < 1 or not 0 < level < 1:
        raise ValueError(f"bootstrap needs groups of at least 1 row, resamples >= 1 and 0 < level < 1 "
                         f"(got sizes {sizes}, resamples {resamples}, level {level})")
    point = np.atleast_1d(np.asarray(statistic(*[np.arange(n) for n in sizes]), dtype=float))
    rng = np.random.default_rng(seed)
    draws = np.array([np.atleast_1d(np.asarray(statistic(*[rng.integers(0, n, n) for n in sizes]), dtype=float))
                      for _ in range(resamples)])
    return [_bias_corrected(draws[:, k], point[k], level) for k in range(len(point))]


def _bias_corrected(draws: np.ndarray, point: float, level: float) -> list[float]:
    draws = np.sort(draws)
    if not math.isfinite(point) or np.all(draws == point):
        return [float(point), float(point)]  # e.g. PSNR of identical images: inf, no spread
    normal = NormalDist()
    below = (np.sum(draws < point) + 0.5 * np.sum(draws == point)) / len(draws)
    below = min(max(below, 0.5 / len(draws)), 1 - 0.5 / len(draws))  # keep z0 finite
    z0 = normal.inv_cdf(below)
    z = normal.inv_cdf(0.5 + level / 2)
    lo_q, hi_q = normal.cdf(2 * z0 - z), normal.cdf(2 * z0 + z)
    # order statistics, not interpolation: PSNR draws may hold inf, and inf - inf has no midpoint
    lo = draws[min(len(draws) - 1, max(0, math.floor(lo_q * len(draws))))]
    hi = draws[min(len(draws) - 1, max(0, math.ceil(hi_q * len(draws)) - 1))]
    return [float(lo), float(hi)]


def mean_ci(values, **options) -> list[float]:
    """Interval of the mean of ``values`` (e.g. 0/1 correctness: accuracy)."""
    values = np.asarray(values, dtype=float)
    return bootstrap_ci(lambda i: values[i].mean(), len(values), **options)[0]


def ratio_of_means_ci(numerator, denominator, **options) -> list[float]:
    """Interval of mean(numerator) / mean(denominator), the two resampled independently (e.g. seconds per
    image of the base over DDiT's: the speed-up)."""
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    return bootstrap_ci(lambda i, j: a[i].mean() / b[j].mean(), (len(a), len(b)), **options)[0]


def psnr_of_mse(mean_mse: float, data_range: float = 1.0) -> float:
    """PSNR (dB) of a mean squared error; inf for 0."""
    return math.inf if mean_mse == 0 else 10 * math.log10(data_range**2 / mean_mse)


def psnr_ci(per_sample_mse, data_range: float = 1.0, **options) -> list[float]:
    """Interval of the batch PSNR (10 log10(range^2 / mean MSE)) from each sample's MSE."""
    mse = np.asarray(per_sample_mse, dtype=float)
    return bootstrap_ci(lambda i: psnr_of_mse(mse[i].mean(), data_range), len(mse), **options)[0]


def split_ci(statistic: Callable[[np.ndarray, np.ndarray], float], n: int, **options) -> list[float]:
    """Percentile interval of ``statistic(a, b)`` over random splits of n rows into two disjoint halves
    (`split_figure`'s interval)."""
    return split_figure(statistic, n, **options)[1]


def split_figure(statistic: Callable[[np.ndarray, np.ndarray], float], n: int, *, strata=None,
                 resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED) -> tuple[float, list[float]]:
    """(median, percentile interval) of ``statistic(a, b)`` over random splits of n rows into two disjoint halves.

    For figures between two disjoint sets of one run (the FD noise floor: the base's samples against the
    base's other samples). The bootstrap does not fit them: a resample repeats rows, and a figure that is
    all finite-sample effect (FD of a model against itself) moves with every repeat, so every resampled
    value lies above the estimate. A split repeats nothing: each is a genuine pair of disjoint seed sets of
    the estimate's sizes, and the interval says how much the figure moves between such pairs. The median
    over the splits is the figure itself, not one split's value: one fixed split (even / odd sample index)
    read 252 on the demo at N = 144 where the splits' median was 57 (a few heavy-tailed samples on one
    side). ``strata`` (one label per row, e.g. the class) splits each stratum in half on its own: an
    unbalanced split would add the class mix to the figure (measured on the demo at N = 480: FD floor 15.7
    balanced, up to 95 over unbalanced splits). The same n, strata and seed give the same splits, so two
    statistics of one run (the floor and DDiT against the base) are medians over the same pairs of halves.
    """
    if n < 4 or resamples < 1 or not 0 < level < 1:
        raise ValueError(f"a split interval needs n >= 4, resamples >= 1 and 0 < level < 1 "
                         f"(got n {n}, resamples {resamples}, level {level})")
    strata = np.zeros(n, dtype=int) if strata is None else np.asarray(strata)
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        a, b, turn = [], [], 0
        for rows in groups:  # each stratum halved; odd strata give their extra row to a and b in turn
            rows = rng.permutation(rows)
            half = (len(rows) + (1 - turn if len(rows) % 2 else 0)) // 2
            turn ^= len(rows) % 2
            a.append(rows[:half])
            b.append(rows[half:])
        draws.append(float(statistic(np.sort(np.concatenate(a)), np.sort(np.concatenate(b)))))
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(np.median(draws)), [float(lo), float(hi)]
