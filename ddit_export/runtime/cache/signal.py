"""TeaCache's input signal per family, computed from the embed's outputs (no engine change needed).

- FLUX (TeaCache4FLUX): block 0's `norm1` applied to the embedded image tokens with the conditioning
  vector, i.e. the timestep-modulated input of the first block. `norm1` is size-independent (the DDiT
  adapters touch only FFN linears), so one small module built from its two tensors serves every size;
  the backend reads them from wherever it keeps the trunk's weights (`signal_weights`).
- Wan 2.1 (TeaCache4Wan2.1): the timestep embedding `temb` (an embed output already).
"""

from __future__ import annotations

import torch


def flux_signal(backend):
    from diffusers.models.normalization import AdaLayerNormZero

    weights = backend.signal_weights()
    weight = weights["transformer_blocks.0.norm1.linear.weight"]
    bias = weights["transformer_blocks.0.norm1.linear.bias"]
    norm = AdaLayerNormZero(weight.shape[1])
    norm.load_state_dict({"linear.weight": weight, "linear.bias": bias})
    norm = norm.to(device=backend.device, dtype=weight.dtype).eval()

    def signal(values: dict) -> torch.Tensor:
        with torch.no_grad():
            tokens = values["tokens"].to(backend.device)
            return norm(tokens.to(weight.dtype), emb=values["temb"].to(backend.device, weight.dtype))[0]

    return signal


def wan_signal(backend):
    return lambda values: values["temb"]


SIGNALS = {"flux": flux_signal, "wan": wan_signal}


def teacache_signal(backend):
    """values -> the signal tensor, for the backend's family."""
    family = backend.manifest["family"]
    if family not in SIGNALS:
        raise ValueError(f"TeaCache has no input signal for the {family} family (have {', '.join(SIGNALS)})")
    return SIGNALS[family](backend)
