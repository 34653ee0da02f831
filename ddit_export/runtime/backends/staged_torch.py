"""PyTorch eager backend of a staged folder: the reference its ONNX chain is validated against.

Rebuilds the staged modules from the manifest's model (verified against its weights hash, as the
single layout's torch backend does): one trunk holding each base weight once with every size's
LoRA unmerged, an embed and a head per size sharing the size-independent modules.
"""

from __future__ import annotations

import torch

from ...ddit.staged import build_staged, cast_staged
from .base import Backend
from .torch_eager import load_manifest_model


class TorchStagedBackend(Backend):
    name = "torch"

    def __init__(self, folder, manifest=None, device="cpu"):
        super().__init__(folder, manifest, device)
        model = load_manifest_model(self.manifest)
        with torch.no_grad():
            staged = build_staged(model, self.latent_shape, int(self.manifest["request"]["text_len"]))
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

    def close(self) -> None:
        self.staged = None
