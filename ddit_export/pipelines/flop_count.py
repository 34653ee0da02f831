"""Analytic FLOPs of one engine call, counted from the manifest's model config and token counts.

Convention (as `torch.utils.flop_counter` and most papers): 2 FLOPs per multiply-accumulate of
every matrix product — linear layers, the patch-embedding conv, and attention's two batched
products (Q K^T and A V, 2 * L_q * L_k * D each). Norms, activations, softmax, RoPE, bias and
residual adds are left out: they are O(tokens * D) against O(tokens * D^2) and are what a
profiler's "matmul FLOPs" also leaves out. Everything scales with the batch B.

Notation: N image/video tokens of the engine (padded grid), T text tokens, D = heads * head_dim,
F = 16 * P * P features of a patch-P token, `lin(n, i, o) = 2 n i o`.

FLUX (diffusers `FluxTransformer2DModel`):
  embed        lin(N, F, D) + lin(T, joint_dim, D)                   x_embedder, context_embedder
  conditioning lin(1, 256, D) + lin(1, D, D)  per timestep / guidance embedder,
               lin(1, pooled, D) + lin(1, D, D)                      pooled text
  double block 2 * lin(1, D, 6D)                                     AdaLN-Zero (image, text)
               lin(N + T, D, 3D) + lin(N + T, D, D)                  qkv and out, both streams
               4 (N + T)^2 D                                         joint attention
               2 * lin(N + T, D, 4D)                                 ff, ff_context
  single block lin(1, D, 3D) + lin(L, D, 3D) + lin(L, D, 4D)          L = N + T: modulation, qkv, mlp
               + 4 L^2 D + lin(L, 5D, D)                             attention, proj_out(cat[attn, mlp])
  output       lin(1, D, 2D) + lin(N, D, F)                          norm_out modulation, proj_out
Wan 2.1 (diffusers `WanTransformer3DModel`, text-to-video):
  embed        lin(N, F, D)                                          Conv3d patch embedding
  conditioning lin(1, freq, D) + lin(1, D, D) + lin(1, D, 6D)        time embedder, time_proj
               lin(T, text_dim, D) + lin(T, D, D)                    text embedder
  block        lin(N, D, 3D) + 4 N^2 D + lin(N, D, D)                self-attention
               lin(N, D, D) + lin(T, D, 2D) + 4 N T D + lin(N, D, D) cross-attention to the text
               lin(N, D, ffn) + lin(N, ffn, D)                       feed-forward
  output       lin(N, D, F)
DDiT, sizes other than the base: + lin(N, F, F) for the patch-space residual (the base size runs
the untouched model, no residual). Merged LoRA adds nothing.
"""

from __future__ import annotations

FLUX_TIME_FREQS = 256  # sinusoidal width of FLUX's timestep / guidance embedders
FLUX_MLP_RATIO = 4  # FeedForward mult and single-block mlp_ratio in FluxTransformer2DModel


def lin(n: int, fan_in: int, fan_out: int) -> int:
    """FLOPs of a linear layer applied to n rows."""
    return 2 * n * fan_in * fan_out


def attention(lq: int, lk: int, dim: int) -> int:
    """FLOPs of Q K^T and A V over all heads (head_dim * heads = dim)."""
    return 2 * (2 * lq * lk * dim)


def scaled(parts: dict, batch: int) -> dict:
    parts = {k: batch * v for k, v in parts.items()}
    return {**parts, "total": sum(parts.values())}
