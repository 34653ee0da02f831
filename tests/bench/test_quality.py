"""Known answers of the quality harness (`ddit_export.bench.quality`)."""

import math

import numpy as np
import pytest
import torch

from ddit_export.bench.quality import frechet_distance, psnr, ssim


def test_identical_images_give_infinite_psnr_and_unit_ssim():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert psnr(x, x.clone()) == math.inf
    assert ssim(x, x.clone()) == pytest.approx(1.0, abs=1e-12)


def test_psnr_of_a_known_mse():
    ref = torch.zeros(1, 3, 8, 8)
    x = ref + 0.1  # MSE 0.01 -> 20 dB at range 1, 20 + 20 log10(2) dB at range 2
    assert psnr(x, ref) == pytest.approx(20.0)
    assert psnr(x, ref, data_range=2.0) == pytest.approx(20 + 20 * math.log10(2))


def test_ssim_drops_with_noise_and_is_symmetric():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=gen)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    value = ssim(noisy, x)
    assert 0 < value < 0.9
    assert ssim(x, noisy) == pytest.approx(value)


def test_ssim_of_a_constant_shift_is_the_luminance_term():
    # Flat images: variances and covariance are 0, so SSIM = (2 mu_x mu_r + c1) / (mu_x^2 + mu_r^2 + c1).
    x, ref = torch.full((1, 1, 16, 16), 0.6), torch.full((1, 1, 16, 16), 0.4)
    c1 = 0.01**2
    assert ssim(x, ref) == pytest.approx((2 * 0.6 * 0.4 + c1) / (0.36 + 0.16 + c1))


def test_frechet_of_identical_gaussians_is_zero_and_shift_is_squared():
    gen = np.random.default_rng(0)
    a = gen.standard_normal((4000, 8)) @ gen.standard_normal((8, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = np.arange(8) * 0.5
    assert frechet_distance(a, a + shift) == pytest.approx(float((shift**2).sum()), rel=1e-9)


def test_frechet_of_known_diagonal_gaussians():
    # Equal means, covariances diag(1) and diag(4): d = sum (1 + 4 - 2*2) = D, from exact covariances.
    gen = np.random.default_rng(1)
    base = gen.standard_normal((20000, 3))
    base = (base - base.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(base, rowvar=False))).T
    assert frechet_distance(torch.tensor(base), torch.tensor(2 * base)) == pytest.approx(3.0, rel=1e-9)


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="shapes"):
        psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
