"""The small modules DDiT adds for each extra patch size P (docs/method.md, Modules per extra size)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def linear_from(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


class PatchEmbed(nn.Module):
    """A size's token embedding (Linear for FLUX, Conv3d for Wan) plus the learned patch-size vector.

    The vector (zero-init) is added to every token: on the last dim of `B x N x d` tokens, or on the
    channel dim of a Conv3d's `B x d x F x h x w` output (`channel_dim=1`).
    """

    def __init__(self, proj: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, channel_dim: int = -1):
        super().__init__()
        self.proj = proj.to(device=weight.device, dtype=weight.dtype)
        self.channel_dim = channel_dim
        with torch.no_grad():
            self.proj.weight.copy_(weight.reshape(self.proj.weight.shape))
            if bias is not None:
                self.proj.bias.copy_(bias)
        self.patch_vector = nn.Parameter(torch.zeros(weight.shape[0], device=weight.device, dtype=weight.dtype))

    def _vector(self, ndim: int) -> torch.Tensor:
        if self.channel_dim == -1:
            return self.patch_vector
        shape = [1] * ndim
        shape[self.channel_dim] = -1
        return self.patch_vector.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.proj(x)
        return out + self._vector(out.dim())

    def folded(self) -> nn.Module:
        """The plain projection with the patch vector folded into its bias (what engines carry)."""
        out = copy.deepcopy(self.proj)
        with torch.no_grad():
            out.bias.add_(self.patch_vector.to(out.bias.dtype))
        return out


class PatchSizeModules(nn.Module):
    """Embedding, de-embedding and latent-space residual of one extra patch size."""

    def __init__(self, family, base_embed: nn.Module, base_deembed: nn.Linear, patch: int):
        super().__init__()
        ref = base_deembed.weight
        # Both families' base de-embedding outputs channels x base_patch^2 features per token.
        features = base_deembed.out_features // family.base_patch**2 * patch * patch
        self.embed = family.new_embed(base_embed, patch)
        self.deembed = family.new_deembed(base_deembed, patch)
        # The residual maps the input patch straight to the output patch; zero-init so the initial
        # model is exactly the resized base model.
        self.residual = nn.Linear(features, features, bias=False, device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            self.residual.weight.zero_()


class FoldedRope(nn.Module):
    """Stands in for a model's RoPE module: returns (cos, sin) tables computed once, in fp32.

    Engines have a static resolution, so the tables are constants of the graph; this avoids the
    float64 math diffusers does per call (TensorRT has no fp64) and the per-call cost.
    """

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor):
        super().__init__()
        self.register_buffer("cos", cos.float().contiguous())
        self.register_buffer("sin", sin.float().contiguous())

    def forward(self, *_args, **_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos, self.sin

    def _apply(self, fn, recurse=True):
        # Follow device moves but never a dtype cast: a bf16 engine keeps fp32 RoPE tables, as
        # diffusers itself computes them in fp32 whatever the model dtype.
        for name in ("cos", "sin"):
            table = self._buffers[name]
            self._buffers[name] = table.to(device=fn(table).device)
        return self
