"""PyTorch eager backend of a staged folder: the reference its ONNX chain is validated against.

Rebuilds the staged modules from the manifest's model (verified against its weights hash, as the
single layout's torch backend does): one trunk holding each base weight once with every size's
LoRA unmerged, an embed and a head per size sharing the size-independent modules.
"""

from __future__ import annotations

import torch

from ....ddit.staged import SIZE_INDEX, build_staged, cast_staged, run_part
from ...loras.torch_weights import TorchLoraWeights, linear_tensors
from ..base import Backend
from ..torch_eager import load_manifest_model
from .calls import StagedCalls, find_weights


class TorchStagedBackend(TorchLoraWeights, StagedCalls, Backend):
    name = "torch"
    first_block_split = True  # the trunk module runs block 0 and the other blocks apart

    def __init__(self, folder, manifest=None, device="cpu"):
        super().__init__(folder, manifest, device)
        model = load_manifest_model(self.manifest)
        with torch.no_grad():
            staged = build_staged(model, self.latent_shape, self.manifest.text_len)
            self.staged = cast_staged(staged, self.dtype).to(self.device).eval()

    @property
    def patch_sizes(self) -> tuple[int, ...]:
        return tuple(self.staged.sizes)

    def _infer(self, patch, feeds, out_device):
        if patch not in self.staged.sizes:
            raise self._engine_missing(patch)
        feeds = {k: v.to(self.device) for k, v in feeds.items()}
        with torch.no_grad():  # not inference_mode: inference tensors would refuse the caller's in-place updates
            out = self.staged(patch, feeds.pop("latent"), **feeds)
        return out.to(out_device)

    # -- the parts one at a time (step caching: calls.py) ----------------------------------
    def _start(self, patch, feeds):
        # as `forward`: the size as a Python int, so the base size skips the LoRA matmuls
        return {**{k: v.to(self.device) for k, v in feeds.items()}, SIZE_INDEX: self.staged.sizes.index(patch)}

    def _part_table(self, patch: int) -> dict:
        return self.staged.part_callables(patch)

    def _part(self, patch, part, values):
        with torch.no_grad():
            return run_part(self._part_table(patch)[part], values)

    def signal_weights(self):
        return find_weights(dict(self.staged.trunk.named_parameters()))

    def _lora_tensors(self):
        # the trunk's linear layers: every size reads them, so a LoRA written there reaches every size
        return linear_tensors(self.staged.trunk)

    def close(self) -> None:
        self.staged = None
