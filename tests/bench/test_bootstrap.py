"""Bootstrap intervals (`ddit_export.bench.bootstrap`): they hold the estimate, shrink with N, have the right width."""

import math

import numpy as np
import pytest

from ddit_export.bench.bootstrap import bootstrap_ci, mean_ci, psnr_ci, psnr_of_mse, ratio_of_means_ci, split_ci
from ddit_export.bench.quality import frechet_distance


def _width(ci):
    return ci[1] - ci[0]


def test_mean_interval_holds_the_estimate_narrows_with_n_and_has_the_normal_width():
    rng = np.random.default_rng(0)
    small, large = rng.random(60) < 0.8, rng.random(960) < 0.8  # 0/1 correctness, as accuracy
    ci_small, ci_large = mean_ci(small), mean_ci(large)
    assert ci_small[0] <= small.mean() <= ci_small[1] and ci_large[0] <= large.mean() <= ci_large[1]
    assert _width(ci_large) < _width(ci_small) / 3  # 16x the samples: ~4x narrower
    p = large.mean()
    normal = 2 * 1.96 * math.sqrt(p * (1 - p) / len(large))  # the textbook interval of a proportion
    assert _width(ci_large) == pytest.approx(normal, rel=0.2)


def test_frechet_interval_holds_the_estimate_and_narrows_with_n():
    """FD of resampled rows is biased up (repeated rows); the bias-corrected interval still holds the estimate."""
    rng = np.random.default_rng(1)
    widths = []
    for n in (120, 960):
        a, real = rng.standard_normal((n, 8)) + 0.5, rng.standard_normal((512, 8))
        point = frechet_distance(a, real)
        ci = bootstrap_ci(lambda i, j, a=a, real=real: frechet_distance(a[i], real[j]), (n, len(real)),
                          resamples=300)[0]
        assert ci[0] <= point <= ci[1]
        widths.append(_width(ci))
    assert widths[1] < widths[0] / 1.5


def test_several_figures_share_resamples_and_the_interval_is_reproducible():
    rng = np.random.default_rng(2)
    x = rng.random(200)
    first = bootstrap_ci(lambda i: (x[i].mean(), 2 * x[i].mean()), 200, resamples=200)
    assert first[1] == pytest.approx([2 * v for v in first[0]])  # same resamples for both figures
    assert bootstrap_ci(lambda i: (x[i].mean(), 2 * x[i].mean()), 200, resamples=200) == first
    assert bootstrap_ci(lambda i: x[i].mean(), 200, resamples=200, seed=1)[0] != first[0]


def test_psnr_interval_and_degenerate_inputs():
    rng = np.random.default_rng(3)
    mse = rng.uniform(0.001, 0.01, 400)
    ci = psnr_ci(mse)
    assert ci[0] <= psnr_of_mse(mse.mean()) <= ci[1] and _width(ci) < 1.0
    assert psnr_ci(np.zeros(10)) == [math.inf, math.inf]  # identical images: no spread, no NaN
    assert mean_ci(np.ones(30)) == [1.0, 1.0]
    ratio = ratio_of_means_ci(rng.normal(2.0, 0.1, 100), rng.normal(1.0, 0.05, 50))
    assert ratio[0] < 2.0 < ratio[1]
    with pytest.raises(ValueError, match="at least 1 row"):
        bootstrap_ci(lambda i: 0.0, 0)


def test_split_interval_halves_each_stratum_and_never_repeats_a_row():
    labels = np.arange(40) % 9  # classes in turn: strata of 5 and 4 rows
    seen = []

    def record(a, b):
        assert len(set(a)) == len(a) and set(a).isdisjoint(b) and len(a) + len(b) == 40
        for c in range(9):
            assert abs(np.sum(labels[a] == c) - np.sum(labels[b] == c)) <= 1
        assert abs(len(a) - len(b)) <= 1
        seen.append(tuple(a))
        return float(len(a))

    assert split_ci(record, 40, strata=labels, resamples=50) == [20.0, 20.0]
    assert len(set(seen)) > 40  # random splits, not one
    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 4))
    point = frechet_distance(x[0::2], x[1::2])
    lo, hi = split_ci(lambda a, b: frechet_distance(x[a], x[b]), 200, resamples=200)
    assert lo <= point <= hi
    with pytest.raises(ValueError, match="n >= 4"):
        split_ci(record, 3)
