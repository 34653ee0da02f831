"""Image quality figures shared by `ddit-export demo` and `calibrate`: PSNR, SSIM, Frechet distance.

Images are B x C x H x W tensors in [0, data_range]. Frechet distance compares two feature sets
(N x D) as Gaussians; the matrix square root is taken by symmetric eigendecomposition, so no scipy.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _pair(x, ref) -> tuple[torch.Tensor, torch.Tensor]:
    x, ref = torch.as_tensor(x), torch.as_tensor(ref)
    if x.shape != ref.shape:
        raise ValueError(f"images have different shapes: {tuple(x.shape)} vs {tuple(ref.shape)}")
    if x.dim() != 4:
        raise ValueError(f"images must be B x C x H x W (got {tuple(x.shape)})")
    return x.double(), ref.double()


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over the whole batch; inf for identical images."""
    x, ref = _pair(x, ref)
    mse = torch.mean((x - ref) ** 2).item()
    if mse == 0:
        return math.inf
    return 10 * math.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, channels: int) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> float:
    """Structural similarity (Wang et al. 2004): 11x11 gaussian window (sigma 1.5), valid region only,
    per channel, averaged over pixels, channels and the batch. The window shrinks for small images."""
    x, ref = _pair(x, ref)
    channels = x.shape[1]
    size = min(SSIM_WINDOW, x.shape[-2], x.shape[-1])
    window = _gaussian_window(size, SSIM_SIGMA, channels)

    def blur(t):
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_r = blur(x), blur(ref)
    var_x = blur(x * x) - mu_x**2
    var_r = blur(ref * ref) - mu_r**2
    cov = blur(x * ref) - mu_x * mu_r
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    index = ((2 * mu_x * mu_r + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_r**2 + c1) * (var_x + var_r + c2))
    return index.mean().item()


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative rounding noise clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N x D each, N >= 2).

    d = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2). The symmetric form of the cross
    term has the same trace as (S_a S_b)^1/2 and only needs square roots of PSD matrices.
    """
    a = np.asarray(torch.as_tensor(feats_a).detach().cpu().double().numpy())
    b = np.asarray(torch.as_tensor(feats_b).detach().cpu().double().numpy())
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be N x D with the same D (got {a.shape} and {b.shape})")
    if min(len(a), len(b)) < 2:
        raise ValueError("each feature set needs at least 2 rows to have a covariance")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False).reshape(a.shape[1], -1), np.cov(b, rowvar=False).reshape(b.shape[1], -1)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(cross))
    return max(value, 0.0)  # tiny negative values are rounding
