"""Unmerged per-size LoRA on one shared linear layer, selected per call by a size index.

The staged layout keeps one copy of every base weight for all patch sizes, so a size's adapter
cannot be merged into it. Each adapted linear instead carries the adapters of the extra sizes
stacked along a leading axis (`A: S x r x in`, `B: S x out x r`) and a scale per size index, the
base size's scale being 0: the base path adds an exact zero, so it stays bit-identical to the
untouched layer while the graph stays one static program for every size (no zero slot is stored).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SizeSelection:
    """The size index of the current call, shared by every stacked layer of one trunk.

    `index` is either a 1-element int64 tensor (one graph serves every size: the dynamic trunk) or a
    Python int (a graph traced for one size: only that size's adapter is read, the base reads none).
    """

    def __init__(self):
        self.index: torch.Tensor | int = 0


class StackedLoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, lora_a: torch.Tensor, lora_b: torch.Tensor, scales, selection: SizeSelection):
        """`lora_a`/`lora_b`: stacked adapters of the extra sizes; `scales`: one per size index (base first, 0)."""
        super().__init__()
        self.base = base
        self.lora_a = nn.Parameter(lora_a.contiguous(), requires_grad=False)
        self.lora_b = nn.Parameter(lora_b.contiguous(), requires_grad=False)
        self.register_buffer("scales", torch.tensor(scales, dtype=lora_a.dtype, device=lora_a.device))
        self.selection = selection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        index = self.selection.index
        if isinstance(index, int):  # traced for one size
            if index == 0:
                return y
            slot = index - 1
            return y + F.linear(F.linear(x, self.lora_a[slot]), self.lora_b[slot]) * self.scales[index]
        slot = torch.clamp(index - 1, min=0)  # the base reads slot 0 and scales it by its 0
        a = self.lora_a.index_select(0, slot).squeeze(0)
        b = self.lora_b.index_select(0, slot).squeeze(0)
        return y + F.linear(F.linear(x, a), b) * self.scales.index_select(0, index)


def stack_adapters(transformer, plain, extra_sizes: list[int], adapter_names: list[str]) -> SizeSelection:
    """Replace every adapted linear of `plain` (peft-free, sharing `transformer`'s base weights) by a
    StackedLoraLinear holding the adapters `adapter_names` (one per extra size, in size order)."""
    from peft.tuners.lora import LoraLayer

    selection = SizeSelection()
    if not adapter_names:  # the base size alone: nothing to select
        return selection
    for name, layer in transformer.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = plain.get_submodule(parent_name)
        base = getattr(parent, child)
        a = torch.stack([layer.lora_A[n].weight.detach() for n in adapter_names]).to(base.weight.dtype)
        b = torch.stack([layer.lora_B[n].weight.detach() for n in adapter_names]).to(base.weight.dtype)
        scales = [0.0] + [float(layer.scaling[n]) for n in adapter_names]
        setattr(parent, child, StackedLoraLinear(base, a, b, scales, selection))
    return selection
