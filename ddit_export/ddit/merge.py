"""Merge one patch size's adapter into plain weights and build that size's engine module.

The merged transformer is a fresh instance of the model class, built on the meta device and then
given the DDiT model's own tensors (no copy) for every weight the adapter does not touch, and new
merged tensors `W + scale * B @ A` for the FFN linears. So each size costs only its FFN weights in
extra memory, the result has no peft wrapper, and casting it never changes the source model.

The export cannot afford even that at FLUX.1-dev scale (the FFN linears are about half the weights):
`adapter_merged_in_place` merges into the model's own FFN weights and restores their exact bits from
a spill file afterwards, so an engine costs no extra copy (docs/export-memory.md).
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from ..util.memory import byte_chunks
from .engine import PatchSizeEngine
from .model import DDiTModel, adapter_name
from .modules import FoldedRope


def _lora_layers(transformer) -> dict:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in transformer.named_modules() if isinstance(m, LoraLayer)}


def base_state_dict(transformer) -> dict:
    """The original model's state dict (names and tensors) seen through any peft wrappers."""
    return {
        key.replace(".base_layer.", "."): value
        for key, value in transformer.state_dict().items()
        if ".lora_" not in key
    }


def merged_transformer(model: DDiTModel, patch: int, *, already_merged: bool = False):
    """A plain (peft-free) transformer with the adapter of `patch` merged; the base size merges nothing.

    For an extra size the embedding and de-embedding are left for the caller to set (their shapes
    differ from the base model's).
    """
    fam, transformer = model.family, model.transformer
    state = base_state_dict(transformer)
    swapped = (f"{fam.embed_name}.", f"{fam.deembed_name}.")
    if patch != model.base_patch:
        state = {k: v for k, v in state.items() if not k.startswith(swapped)}
        name = adapter_name(patch)
        # Merged in place (`adapter_merged_in_place`): the base weights already are this size's weights.
        for layer_name, layer in ({} if already_merged else _lora_layers(transformer)).items():
            base_weight = layer.get_base_layer().weight
            delta = layer.get_delta_weight(name)
            state[f"{layer_name}.weight"] = (base_weight.float() + delta.float()).to(base_weight.dtype)
    with torch.device("meta"):
        plain = type(transformer).from_config(fam.engine_config(transformer.config, patch))
    missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    if unexpected or any(not k.startswith(swapped) for k in missing):
        raise RuntimeError(f"merge does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return plain.eval()


def rope_tables(model: DDiTModel, patch: int, latent_shape, text_len: int) -> FoldedRope:
    """The model's own RoPE for this size's token coordinates (padded grid), computed once, in fp32."""
    fam = model.family
    with torch.no_grad():
        cos, sin = fam.rope_tables(model.transformer, patch, fam.padded_shape(latent_shape, patch), text_len)
    device = next(model.transformer.parameters()).device
    return FoldedRope(cos.to(device), sin.to(device))


def build_engine(model: DDiTModel, patch: int, latent_shape, text_len: int, *,
                 already_merged: bool = False) -> PatchSizeEngine:
    """The uniform static-shape engine module of one patch size (plain torch, ready to export).

    `already_merged`: called inside `adapter_merged_in_place(model, patch)`, so the engine shares the
    (merged) base weights instead of holding merged copies; it must not be used after that block."""
    fam = model.family
    fam.check_patch_sizes([model.base_patch, patch], latent_shape)
    if patch not in model.patch_sizes:
        raise ValueError(f"patch size {patch} is not attached (have {model.patch_sizes})")
    plain = merged_transformer(model, patch, already_merged=already_merged)
    residual = None
    if patch != model.base_patch:
        mods = model.extra[str(patch)]
        setattr(plain, fam.embed_name, fam.fold_embed(mods.embed))
        # Copies, so that casting an engine (e.g. to bf16) never touches the trainable model.
        setattr(plain, fam.deembed_name, copy.deepcopy(mods.deembed))
        residual = copy.deepcopy(mods.residual)
    setattr(plain, fam.rope_name, rope_tables(model, patch, latent_shape, text_len))
    leftovers = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if leftovers:
        raise RuntimeError(f"engine p{patch} has unset tensors after merge: {leftovers[:3]}")
    return PatchSizeEngine(fam, plain, residual, patch, latent_shape, text_len).eval()


def cast_engine(engine: PatchSizeEngine, dtype: torch.dtype) -> PatchSizeEngine:
    """Cast to `dtype` but keep the modules the model class wants in fp32 (as from_pretrained does)."""
    engine.to(dtype)
    keep = getattr(engine.transformer, "_keep_in_fp32_modules", None) or []
    if dtype != torch.float32 and keep:
        # Same rule as diffusers' from_pretrained: a parameter stays fp32 if any part of its name is listed.
        for name, param in engine.transformer.named_parameters():
            if any(part in keep for part in name.split(".")):
                param.data = param.data.float()
    return engine


@contextmanager
def adapter_merged_in_place(model: DDiTModel, patch: int, spill_dir: Path):
    """Inside the block, the model's adapted weights are `W + scale * B @ A` of `patch`; on exit (error
    included) they are the original bits again, read back from a spill file in `spill_dir`.

    The merge computes what `merged_transformer` computes, one layer at a time, so an engine built with
    `build_engine(..., already_merged=True)` inside the block has the same weights as one built outside
    it, without a second copy of the FFN linears. Restoring by subtraction would not be exact in
    floating point; the spill is (raw bytes, one layer in memory at a time).
    """
    if patch == model.base_patch:  # the base size merges nothing
        yield
        return
    layers = _lora_layers(model.transformer)
    name = adapter_name(patch)
    spill_dir = Path(spill_dir)
    spill_dir.mkdir(parents=True, exist_ok=True)
    spill = spill_dir / f"p{patch}-base-weights.bin"
    done: list = []
    try:
        with torch.no_grad(), open(spill, "wb") as f:
            for layer in layers.values():
                weight = layer.get_base_layer().weight
                for block in byte_chunks(weight):  # copies: `.numpy()` on the weight would pin it in memory
                    f.write(block)
                merged = (weight.float() + layer.get_delta_weight(name).float()).to(weight.dtype)
                done.append(weight)  # from here on, this layer needs restoring
                weight.copy_(merged)
                del merged
        yield
    finally:
        with torch.no_grad(), open(spill, "rb") if done else open(os.devnull, "rb") as f:
            for weight in done:
                raw = torch.empty(weight.numel() * weight.element_size(), dtype=torch.uint8)
                if f.readinto(raw.numpy()) != raw.numel():
                    raise RuntimeError(f"the spill file {spill} is short: the model's weights cannot be restored")
                weight.copy_(raw.view(weight.dtype).reshape(weight.shape))
        spill.unlink(missing_ok=True)
