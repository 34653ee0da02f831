"""The small modules DDiT adds for each extra patch size P (ddit_method.md, Model changes)."""

from __future__ import annotations

import torch
from torch import nn

from .resize import pi_resize_embedding, upsampled_deembedding


class PatchEmbed(nn.Module):
    """Token embedding for size P plus the learned patch-size vector (zero-init) added to every token."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_features, dim)
        self.patch_vector = nn.Parameter(torch.zeros(dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens) + self.patch_vector

    def folded(self) -> nn.Linear:
        """A plain Linear with the patch vector folded into the bias (what engines carry)."""
        out = nn.Linear(self.proj.in_features, self.proj.out_features, device=self.proj.weight.device)
        with torch.no_grad():
            out.weight.copy_(self.proj.weight)
            out.bias.copy_(self.proj.bias + self.patch_vector)
        return out.to(self.proj.weight.dtype)


class PatchSizeModules(nn.Module):
    """Embedding, de-embedding and latent-space residual of one extra patch size."""

    def __init__(self, base_embed: nn.Linear, base_deembed: nn.Linear, channels: int, p: int, P: int):
        super().__init__()
        dim = base_embed.out_features
        features = channels * P * P
        ref = base_embed.weight
        self.embed = PatchEmbed(features, dim).to(device=ref.device, dtype=ref.dtype)
        self.deembed = nn.Linear(dim, features, bias=base_deembed.bias is not None).to(ref.device, ref.dtype)
        # The residual maps the input patch straight to the output patch; zero-init so the initial
        # model is exactly the resized base model.
        self.residual = nn.Linear(features, features, bias=False).to(ref.device, ref.dtype)
        with torch.no_grad():
            self.embed.proj.weight.copy_(pi_resize_embedding(base_embed.weight, channels, p, P))
            self.embed.proj.bias.copy_(base_embed.bias)
            w, b = upsampled_deembedding(base_deembed.weight, base_deembed.bias, channels, p, P)
            self.deembed.weight.copy_(w)
            if b is not None:
                self.deembed.bias.copy_(b)
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
