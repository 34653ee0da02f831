"""torch.compile backend of a staged folder: the eager staged modules, each part compiled once.

The trunk is ONE compiled module for every size (`dynamic=False`: one graph per token count, all
reading the same weight tensors and the unmerged LoRA stacks), so compiling adds code, not weights.
Each embed and head compiles once on its size's first call. No artifact on disk.
"""

from __future__ import annotations

import torch

from ....ddit.staged import HEAD_OUTPUT, SIZE_INDEX, chain
from ..torch_compile import default_mode
from .torch_eager import TorchStagedBackend


class TorchCompileStagedBackend(TorchStagedBackend):
    name = "torch-compile"

    def __init__(self, folder, manifest=None, device="cpu", mode: str | None = None):
        super().__init__(folder, manifest, device)
        self.mode = mode or default_mode(self.device)

        def compiled(module):
            return torch.compile(module, mode=self.mode, dynamic=False, fullgraph=False)

        trunk = compiled(self.staged.trunk)
        self._parts = {}
        for p in self.staged.sizes:
            parts = self.staged.part_callables(p)
            self._parts[p] = {
                "embed": (compiled(parts["embed"][0]), *parts["embed"][1:]),
                "trunk": (trunk, *parts["trunk"][1:]),
                "head": (compiled(parts["head"][0]), *parts["head"][1:]),
                # the trunk split after block 0 (first-block caching), compiled on first use
                "first_block": (compiled(parts["first_block"][0]), *parts["first_block"][1:]),
                "other_blocks": (compiled(parts["other_blocks"][0]), *parts["other_blocks"][1:]),
            }

    def _infer(self, patch, feeds, out_device):
        if patch not in self._parts:
            raise self._engine_missing(patch)
        given = {k: v.to(self.device) for k, v in feeds.items()}
        given[SIZE_INDEX] = self.staged.sizes.index(patch)  # an int: one graph per size, the base without LoRA
        with torch.no_grad():
            return chain(self._parts[patch], given)[HEAD_OUTPUT].to(out_device)

    def _part_table(self, patch: int) -> dict:
        return self._parts[patch]
