"""The demo's quality figures (`demo/quality_figures.py`): FD noise floor on disjoint seed halves, intervals."""

import numpy as np
import pytest
import torch

from ddit_export.bench.bootstrap import split_figure
from ddit_export.bench.quality import frechet_distance, psnr
from ddit_export.demo.quality_figures import (
    accuracy_figures,
    fd_figures,
    halves,
    psnr_figures,
    speed_figures,
    with_ci,
)


def test_halves_are_disjoint_cover_everything_and_balance_classes():
    a, b = halves(36)
    assert set(a).isdisjoint(b) and sorted([*a, *b]) == list(range(36))
    labels = np.arange(36) % 9  # classes in turn, as the demo samples
    assert sorted(labels[a]) == sorted(labels[b])  # every class twice in each half


def test_noise_floor_is_the_base_against_itself_on_the_two_halves():
    rng = np.random.default_rng(0)
    base, ddit, real = rng.standard_normal((144, 6)), rng.standard_normal((144, 6)) + 0.3, rng.standard_normal((512, 6))
    f = fd_figures(torch.tensor(base), torch.tensor(ddit), torch.tensor(real), resamples=200)
    # the floor is the median over the same random splits its interval comes from (bench/bootstrap.split_figure)
    floor, floor_ci = split_figure(lambda x, y: frechet_distance(base[x], base[y]), 144, resamples=200)
    assert f["fd_noise_floor"] == pytest.approx(floor) and f["fd_noise_floor_ci"] == pytest.approx(floor_ci)
    across, _ = split_figure(lambda x, y: (frechet_distance(ddit[x], base[y]) + frechet_distance(ddit[y], base[x])) / 2,
                             144, resamples=200)
    assert f["fd_ddit_vs_base"] == pytest.approx(across)
    assert f["fd_ddit_vs_base"] > f["fd_noise_floor"]  # shifted by 0.3 in every dimension: visible at N = 144
    assert f["fd_ratio"] == pytest.approx(f["fd_ddit"] / f["fd_base"]) and f["fd_ratio"] > 1
    assert f["fd_halves_samples"] == [72, 72] and f["fd_real_samples"] == 512
    for key in ("fd_base", "fd_ddit", "fd_ratio", "fd_noise_floor", "fd_ddit_vs_base"):
        lo, hi = f[f"{key}_ci"]
        assert lo <= f[key] <= hi, key
    same = fd_figures(torch.tensor(base), torch.tensor(base), torch.tensor(real), resamples=50)
    assert same["fd_ratio"] == 1 and same["fd_ddit_vs_base"] == pytest.approx(same["fd_noise_floor"])
    with pytest.raises(ValueError, match="at least 4 samples"):
        fd_figures(torch.tensor(base[:3]), torch.tensor(base[:3]), torch.tensor(real))


def test_accuracy_psnr_and_speed_intervals_hold_their_estimates():
    acc = accuracy_figures([1, 1, 0, 1] * 30, [1, 0, 0, 1] * 30, resamples=300)
    assert acc["accuracy_base"] == 0.75 and acc["accuracy_ddit"] == 0.5
    assert acc["accuracy_base_ci"][0] < 0.75 < acc["accuracy_base_ci"][1]
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(40, 3, 8, 8, generator=gen)
    noisy = (ref + 0.05 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
    p = psnr_figures(noisy, ref, resamples=300)
    assert p["psnr_db"] == pytest.approx(psnr(noisy, ref))  # the batch PSNR `ddit-export demo` always reported
    assert p["psnr_db_ci"][0] < p["psnr_db"] < p["psnr_db_ci"][1] and len(p["psnr_db_per_sample"]) == 40
    s = speed_figures([0.2, 0.22, 0.21, 0.2], [0.1, 0.1, 0.11, 0.1], resamples=300)
    assert s["speedup"] == pytest.approx(0.2075 / 0.1025) and s["speedup_ci"][0] <= s["speedup"] <= s["speedup_ci"][1]
    assert speed_figures([0.2] * 3, [0.1] * 7)["timed_samples_base"] == 3  # base timed on a subset
    assert with_ci(0.842, [0.81, 0.87], ".1f", 100, "%") == "84.2% [81.0, 87.0]"
