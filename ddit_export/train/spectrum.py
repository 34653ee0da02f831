"""How much power a predicted clean latent has at each spatial frequency: the spectral term of distillation.

Velocity MSE at a coarse size is minimised by a smooth prediction wherever the coarse tokens cannot
place fine detail exactly (the mean of the plausible details), and every coarse step mixes that
smooth prediction into the latent. Measured on the demo (docs/quality.md, "The spectral term"): DDiT's
images held 61% of the base's power in the top quarter of the frequency rings. The term below compares the
radially binned power spectra of the student's and the teacher's predicted clean latents in log space:
it asks for the right AMOUNT of detail per frequency band, which a smooth prediction misses, without
asking for its exact placement (MSE still does that).
"""

from __future__ import annotations

import torch


def radial_power(latent: torch.Tensor) -> torch.Tensor:
    """[B, ..., H, W] -> [B, R]: mean spectral power per integer radius of the 2-D frequency grid.

    Orthonormal FFT over the last two axes (Parseval: the powers sum to the latent's energy), averaged
    over every other axis (channels, and frames for video) and over the frequencies of each ring.
    """
    height, width = latent.shape[-2:]
    power = torch.fft.fft2(latent.float(), norm="ortho").abs().pow(2)
    power = power.reshape(latent.shape[0], -1, height, width).mean(1)
    fy = torch.fft.fftfreq(height, device=latent.device) * height
    fx = torch.fft.fftfreq(width, device=latent.device) * width
    radius = (fy[:, None].pow(2) + fx[None, :].pow(2)).sqrt().round().long().flatten()
    rings = int(radius.max()) + 1
    summed = torch.zeros(latent.shape[0], rings, device=latent.device).index_add_(1, radius, power.flatten(1))
    counts = torch.bincount(radius, minlength=rings).to(summed.dtype)
    return summed / counts


def spectral_distance(prediction: torch.Tensor, target: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """Mean squared log ratio of the radial power spectra (scalar; gradient flows to `prediction`).

    `floor` (relative to the target's mean power, per sample) keeps rings the target leaves nearly
    empty from dominating through the log.
    """
    predicted, wanted = radial_power(prediction), radial_power(target)
    eps = floor * wanted.mean(-1, keepdim=True)
    return ((predicted + eps).log() - (wanted + eps).log()).pow(2).mean()
