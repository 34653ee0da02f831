"""Initial weights of the per-size embedding and de-embedding (FlexiViT "PI-resize").

Let B be the bilinear upsampling matrix that maps a p x p patch to a P x P patch (one channel,
`P*P x p*p`). For the new embedding we want `W_P (B x) = W_p x` for every base patch x: a coarse
token of a smooth region starts out exactly like the base token of the region at lower resolution.
B has full column rank, so `W_P = W_p pinv(B)` solves it exactly (per channel). The de-embedding
starts as the base prediction upsampled: `W_out_P = B W_out_p` (per channel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bilinear_upsample_matrix(p: int, P: int) -> torch.Tensor:
    """`P*P x p*p` float64 matrix: column j is basis patch j upsampled bilinearly (align_corners=False)."""
    basis = torch.eye(p * p, dtype=torch.float64).reshape(p * p, 1, p, p)
    up = F.interpolate(basis, size=(P, P), mode="bilinear", align_corners=False)
    return up.reshape(p * p, P * P).T.contiguous()


def pi_resize_embedding(weight: torch.Tensor, channels: int, p: int, P: int) -> torch.Tensor:
    """Base embedding `d x (C*p*p)` -> `d x (C*P*P)`; input features ordered (channel, dy, dx)."""
    d = weight.shape[0]
    pinv = torch.linalg.pinv(bilinear_upsample_matrix(p, P))  # p*p x P*P
    w = weight.double().reshape(d, channels, p * p)
    return (w @ pinv).reshape(d, channels * P * P).to(weight.dtype)


def upsampled_deembedding(
    weight: torch.Tensor, bias: torch.Tensor | None, channels: int, p: int, P: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Base de-embedding `(C*p*p) x d` -> `(C*P*P) x d`: predicts the bilinearly upsampled base output."""
    up = bilinear_upsample_matrix(p, P)  # P*P x p*p
    d = weight.shape[1]
    w = (up @ weight.double().reshape(channels, p * p, d)).reshape(channels * P * P, d).to(weight.dtype)
    if bias is None:
        return w, None
    b = (up @ bias.double().reshape(channels, p * p, 1)).reshape(-1).to(bias.dtype)
    return w, b
