"""A diffusers transformer with DDiT attached: one extra embedding, de-embedding, residual and LoRA
adapter per extra patch size. The base size runs the untouched model (adapters disabled).

This is the trainable, eager form. Engines are built from it by `ddit_export.ddit.merge`.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from torch import nn

from ..families.base import Family
from .modules import PatchSizeModules

DEFAULT_LORA_RANK = 32


def adapter_name(patch: int) -> str:
    return f"p{patch}"


def run_step(family: Family, transformer, residual, patch: int, latent, conditioning):
    """One model call at `patch`: pad, the family's call, the latent-space residual, crop."""
    padded = family.pad(latent, patch)
    out = family.predict(transformer, padded, patch, conditioning)
    if residual is not None:
        out = out + family.unpack(residual(family.pack(padded, patch)), patch, tuple(padded.shape))
    return family.crop(out, tuple(latent.shape))


class DDiTModel(nn.Module):
    def __init__(
        self,
        family: Family,
        transformer,
        patch_sizes,
        lora_rank: int = DEFAULT_LORA_RANK,
        lora_alpha: float | None = None,
    ):
        super().__init__()
        from peft import LoraConfig

        self.family = family
        self.transformer = transformer
        self.base_patch = family.base_patch
        self.patch_sizes = sorted(set(int(p) for p in patch_sizes))
        self.lora_rank = lora_rank
        self.lora_alpha = float(lora_alpha if lora_alpha is not None else lora_rank)
        embed = getattr(transformer, family.embed_name)
        deembed = getattr(transformer, family.deembed_name)
        self.extra = nn.ModuleDict({str(p): PatchSizeModules(family, embed, deembed, p) for p in self.extra_sizes})
        for p in self.extra_sizes:
            config = LoraConfig(
                r=lora_rank, lora_alpha=self.lora_alpha, target_modules=family.lora_targets, init_lora_weights=True
            )
            with warnings.catch_warnings():
                # peft warns that a second adapter joins the first: one adapter per size is the design.
                warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                transformer.add_adapter(config, adapter_name=adapter_name(p))
        if self.extra_sizes:
            transformer.disable_adapters()

    @property
    def extra_sizes(self) -> list[int]:
        return [p for p in self.patch_sizes if p != self.base_patch]

    @property
    def config(self):
        return self.transformer.config

    @contextmanager
    def patch_size(self, patch: int):
        """Route the transformer through size `patch`: its embedding, de-embedding and adapter."""
        if patch not in self.patch_sizes:
            raise ValueError(f"patch size {patch} is not attached (have {self.patch_sizes})")
        if patch == self.base_patch:
            yield None
            return
        t, fam, mods = self.transformer, self.family, self.extra[str(patch)]
        swaps = {fam.embed_name: mods.embed, fam.deembed_name: mods.deembed}
        rope = fam.eager_rope(t, patch)
        if rope is not None:
            swaps[fam.rope_name] = rope
        saved = {name: getattr(t, name) for name in swaps}
        # peft's set_adapter / enable / disable also flip requires_grad of LoRA weights; what the
        # caller chose to train must survive routing, or autograd silently drops LoRA gradients.
        trainable = {p: p.requires_grad for k, p in t.named_parameters() if ".lora_" in k}
        for name, module in swaps.items():
            setattr(t, name, module)
        t.enable_adapters()
        t.set_adapter(adapter_name(patch))
        self._restore(trainable)
        try:
            with fam.patch_config(t, patch):
                yield mods.residual
        finally:
            for name, module in saved.items():
                setattr(t, name, module)
            t.disable_adapters()
            self._restore(trainable)

    @staticmethod
    def _restore(flags: dict) -> None:
        for param, flag in flags.items():
            param.requires_grad_(flag)

    def forward(self, latent: torch.Tensor, patch: int, **conditioning) -> torch.Tensor:
        """Full-resolution prediction for `latent` computed at patch size `patch` (eager, trainable)."""
        with self.patch_size(patch) as residual:
            return run_step(self.family, self.transformer, residual, patch, latent, conditioning)

    def ddit_parameters(self, patch: int):
        """The parameters distillation trains for one size: its modules and its LoRA adapter."""
        name = adapter_name(patch)
        yield from self.extra[str(patch)].parameters()
        for key, param in self.transformer.named_parameters():
            if f".{name}." in key and "lora_" in key:
                yield param
