"""The staged layout's modules: per size an `embed` and a `head`, ONE `trunk` for every size.

Built from a DDiT model without copying a base weight: the trunk holds the model's own blocks, with
each adapted FFN linear carrying every extra size's LoRA unmerged (`stacked_lora.py`), and every
embed/head shares the size-independent modules (time/text embeddings, output norm). So all sizes
together cost one model plus the adapters and the small per-size modules.

A call at size P runs embed[P] -> trunk(size index of P) -> head[P]; the values passed between
the parts are named, and each part takes the names it needs (`chain`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .engine import ENGINE_INPUTS
from .merge import merged_transformer, rope_tables
from .model import DDiTModel, adapter_name
from .stacked_lora import stack_adapters

TRUNK_OUTPUTS = ("trunk_tokens", "block_residual")
HEAD_OUTPUT = "prediction"
SIZE_INDEX = "size_index"


def family_parts(family):
    """The family's part module (`Family.staged_parts`: `staged_flux`, `staged_wan`)."""
    if family.staged_parts is None:
        raise ValueError(f"the staged layout does not know the {family.name} family (it names no staged part "
                         "module: families/<name>.py `staged_parts`)")
    return family.staged_parts


class StagedModel(nn.Module):
    """embeds[P], trunk, heads[P]; `forward(patch, latent, **conditioning)` runs the chain in eager torch."""

    def __init__(self, family, transformer, sizes: list[int], embeds: dict, trunk: nn.Module, heads: dict, latent_shape,
                 text_len: int):
        super().__init__()
        self.family, self.sizes = family, list(sizes)
        self.transformer = transformer  # the plain model whose tensors every part shares
        self.embeds = nn.ModuleDict({str(p): m for p, m in embeds.items()})
        self.trunk = trunk
        self.heads = nn.ModuleDict({str(p): m for p, m in heads.items()})
        self.latent_shape, self.text_len = tuple(latent_shape), text_len

    def size_index(self, patch: int) -> torch.Tensor:
        """The trunk's size input for `patch`: its position among the sizes (the base, 0, adds no LoRA)."""
        return torch.tensor([self.sizes.index(patch)], dtype=torch.int64)

    def forward(self, patch: int, latent: torch.Tensor, **conditioning) -> torch.Tensor:
        # Eager calls select the size with a Python int: the base then skips the LoRA matmuls (the
        # tensor path computes them and scales them by 0; measured 1.4x slower at the base in eager
        # torch on the medium preset). Exported graphs take the tensor (`size_index`).
        given = {"latent": latent, SIZE_INDEX: self.sizes.index(patch), **conditioning}
        return chain(self.part_callables(patch), given)[HEAD_OUTPUT]

    def part_callables(self, patch: int) -> dict:
        """part -> (callable taking keyword inputs, input names, output names) for a call at `patch`."""
        fp = family_parts(self.family)
        embed, head = self.embeds[str(patch)], self.heads[str(patch)]
        conditions = {n for n, _ in self.family.condition_specs(self.transformer.config, 1, 1)}
        embed_inputs = [n for n in ENGINE_INPUTS if n == "latent" or n in conditions]  # the single engine's order
        head_inputs = ["trunk_tokens", "temb"] + (["latent"] if head.residual is not None else [])
        return {
            "embed": (embed, embed_inputs, list(fp.EMBED_OUTPUTS)),
            "trunk": (self.trunk, list(fp.TRUNK_INPUTS), list(TRUNK_OUTPUTS)),
            "head": (head, head_inputs, [HEAD_OUTPUT]),
            # the trunk split after block 0 (first-block caching; `chain` never runs these)
            "first_block": (self.trunk.first_block, list(fp.TRUNK_INPUTS), ["head_tokens", "head_text_tokens"]),
            "other_blocks": (self.trunk.other_blocks, list(fp.OTHER_BLOCKS_INPUTS), ["trunk_tokens"]),
        }


def chain(parts: dict, given: dict) -> dict:
    """Run embed -> trunk -> head, each on the named values it takes; returns every named value."""
    values = dict(given)
    for part in ("embed", "trunk", "head"):
        values = run_part(parts[part], values)
    return values


def run_part(part: tuple, values: dict) -> dict:
    """One part `(callable, input names, output names)` on the named values: the values plus its outputs."""
    run, inputs, outputs = part
    out = run(**{n: values[n] for n in inputs})
    return {**values, **dict(zip(outputs, out if isinstance(out, (tuple, list)) else (out,)))}


def build_staged(model: DDiTModel, latent_shape, text_len: int, like: StagedModel | None = None) -> StagedModel:
    """The staged modules of every attached size (plain torch, sharing the model's base weights).

    ``like``: another resolution bucket's staged model of the same DDiT model, whose modules this one reuses
    (the trunk's blocks and stacked adapters, every size's embedding, de-embedding and residual): only the
    RoPE tables (and the pad/crop geometry) are the new bucket's own, so every bucket holds one set of weights.
    """
    fam = model.family
    fam.check_patch_sizes(model.patch_sizes, latent_shape)
    if like is not None:
        plain, selection = like.transformer, like.selection
        per_size = {p: (*like.size_modules[p], rope_tables(model, p, latent_shape, text_len))
                    for p in model.patch_sizes}
        return _assemble(fam, model, plain, selection, per_size, latent_shape, text_len)
    plain = merged_transformer(model, model.base_patch)  # the model's own tensors, peft-free
    extra = model.extra_sizes
    selection = stack_adapters(model.transformer, plain, extra, [adapter_name(p) for p in extra])
    per_size = {}
    for p in model.patch_sizes:
        rope = rope_tables(model, p, latent_shape, text_len)
        if p == model.base_patch:
            per_size[p] = (getattr(plain, fam.embed_name), getattr(plain, fam.deembed_name), None, rope)
            continue
        mods = model.extra[str(p)]
        # Copies, so that casting the staged model (e.g. to bf16) never touches the trainable model.
        per_size[p] = (fam.fold_embed(mods.embed), copy.deepcopy(mods.deembed), copy.deepcopy(mods.residual), rope)
    # The model's own RoPE module is never called (each embed carries its size's tables); replace it,
    # as single engines do, so that no tensor of `plain` is left on the meta device.
    setattr(plain, fam.rope_name, per_size[model.base_patch][3])
    leftovers = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if leftovers:
        raise RuntimeError(f"staged model has unset tensors: {leftovers[:3]}")
    return _assemble(fam, model, plain, selection, per_size, latent_shape, text_len)


def _assemble(fam, model, plain, selection, per_size: dict, latent_shape, text_len: int) -> StagedModel:
    embeds, trunk, heads = family_parts(fam).build_parts(fam, plain, selection, per_size, latent_shape)
    staged = StagedModel(fam, plain, model.patch_sizes, embeds, trunk, heads, latent_shape, text_len).eval()
    staged.selection = selection  # what another bucket's staged model reuses (`build_staged(like=...)`)
    staged.size_modules = {p: mods[:3] for p, mods in per_size.items()}
    return staged


def cast_staged(staged: StagedModel, dtype: torch.dtype) -> StagedModel:
    """Cast to `dtype`, keeping in fp32 what the model class keeps there (as from_pretrained does)."""
    staged.to(dtype)
    keep = list(getattr(staged.family.model_class(), "_keep_in_fp32_modules", None) or [])
    if dtype != torch.float32 and keep:
        for name, param in staged.named_parameters():
            if any(part in keep for part in name.split(".")):
                param.data = param.data.float()
    return staged
