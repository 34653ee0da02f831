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


def flux_flops(config: dict, tokens: int, text_len: int, patch: int, residual: bool, batch: int = 1) -> dict:
    """Per-part FLOPs of one FLUX engine call; ``total`` is their sum."""
    d = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    n, t, f = tokens, text_len, int(config["in_channels"]) // 4 * patch * patch  # FLUX tokens hold 2x2 pixels
    seq, hidden = n + t, FLUX_MLP_RATIO * d
    embedders = 2 if config.get("guidance_embeds") else 1
    double = (2 * lin(1, d, 6 * d) + lin(seq, d, 3 * d) + lin(seq, d, d) + attention(seq, seq, d)
              + lin(seq, d, hidden) + lin(seq, hidden, d))
    single = (lin(1, d, 3 * d) + lin(seq, d, 3 * d) + lin(seq, d, hidden) + attention(seq, seq, d)
              + lin(seq, d + hidden, d))
    parts = {
        "embed": lin(n, f, d) + lin(t, int(config["joint_attention_dim"]), d),
        "conditioning": embedders * (lin(1, FLUX_TIME_FREQS, d) + lin(1, d, d))
        + lin(1, int(config["pooled_projection_dim"]), d) + lin(1, d, d),
        "double_blocks": int(config["num_layers"]) * double,
        "single_blocks": int(config["num_single_layers"]) * single,
        "output": lin(1, d, 2 * d) + lin(n, d, f),
        "ddit_residual": lin(n, f, f) if residual else 0,
    }
    return _scaled(parts, batch)


def wan_flops(config: dict, tokens: int, text_len: int, patch: int, residual: bool, batch: int = 1) -> dict:
    """Per-part FLOPs of one Wan 2.1 text-to-video engine call; ``total`` is their sum."""
    if config.get("added_kv_proj_dim") or config.get("image_dim"):
        raise ValueError("FLOP count: Wan image-to-video (added image K/V) is not modelled")
    d = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    n, t, f, ffn = tokens, text_len, int(config["in_channels"]) * patch * patch, int(config["ffn_dim"])
    block = (lin(n, d, 3 * d) + attention(n, n, d) + lin(n, d, d)  # self-attention
             + lin(n, d, d) + lin(t, d, 2 * d) + attention(n, t, d) + lin(n, d, d)  # cross-attention
             + lin(n, d, ffn) + lin(n, ffn, d))
    parts = {
        "embed": lin(n, f, d),
        "conditioning": lin(1, int(config["freq_dim"]), d) + lin(1, d, d) + lin(1, d, 6 * d)
        + lin(t, int(config["text_dim"]), d) + lin(t, d, d),
        "blocks": int(config["num_layers"]) * block,
        "output": lin(n, d, f),
        "ddit_residual": lin(n, f, f) if residual else 0,
    }
    return _scaled(parts, batch)


def _scaled(parts: dict, batch: int) -> dict:
    parts = {k: batch * v for k, v in parts.items()}
    return {**parts, "total": sum(parts.values())}


COUNTERS = {"flux": flux_flops, "wan": wan_flops}


def engine_flops(manifest: dict, patch: int) -> dict:
    """FLOPs of one call of the size-``patch`` engine an engine folder describes."""
    family = manifest["family"]
    if family not in COUNTERS:
        raise ValueError(f"no FLOP model for family '{family}' (have {', '.join(COUNTERS)})")
    entry = next((e for e in manifest["engines"] if int(e["patch_size"]) == patch), None)
    if entry is None:
        raise ValueError(f"the manifest has no engine of patch size {patch}")
    return COUNTERS[family](
        manifest["model"]["config"], int(entry["tokens"]), int(manifest["request"]["text_len"]), patch,
        residual=patch != int(manifest["base_patch"]), batch=int(manifest["latent_shape"][0]),
    )


def flops_table(manifest: dict) -> dict[int, int]:
    """patch size -> total FLOPs per call."""
    return {int(p): engine_flops(manifest, int(p))["total"] for p in manifest["patch_sizes"]}
