"""AOTInductor backend of a staged folder: packages without weights, all given the same tensors.

`staged/weights.safetensors` is read once; every package (embed, head and the trunk of each size)
gets its constants pointed at those tensors (`load_constants(..., user_managed=True)`), so every
size together holds one set of weights. Same interface as the single layout's backend.
"""

from __future__ import annotations

import torch

from ...artifacts.manifest import verify_entry
from ...ddit.staged import HEAD_OUTPUT, SIZE_INDEX, chain
from ...export.staged_aoti import WEIGHTS, load_part, load_shared_weights
from ...export.staged_aoti_stage import PARTS, _as_kwargs
from .base import Backend, BackendError
from .staged_onnx import staged_entries


class AotiStagedBackend(Backend):
    name = "aoti"

    def __init__(self, folder, manifest=None, device="cpu"):
        super().__init__(folder, manifest, device)
        entries = staged_entries(self.manifest, "aoti")
        onnx = staged_entries(self.manifest, "onnx")
        if not entries:
            raise BackendError(f"{self.folder} has no AOTInductor packages: export with `--backends onnx,aoti`")
        for entry in entries.values():
            if entry.get("device") != self.device.type:
                raise BackendError(
                    f"{entry['files'][0]} was compiled for {entry.get('device')}, not {self.device.type}: "
                    f"rebuild it on a {self.device.type} machine with `--backends onnx,aoti --force`"
                )
            verify_entry(self.folder, entry)
        self.weights = load_shared_weights(self.folder / WEIGHTS, self.device)
        self._sizes = {int(p): i for i, p in enumerate(self.manifest["patch_sizes"])}
        self._parts = {}
        for p, entry in sorted(entries.items()):
            io = onnx[p]["parts_io"]  # the parts' input and output names (same graphs' signatures)
            self._parts[p] = {
                part: (_as_kwargs(load_part(self.folder / rel, part, p, self.weights, self.device)),
                       [t["name"] for t in io[part]["inputs"]], [t["name"] for t in io[part]["outputs"]])
                for part, rel in zip(PARTS, entry["files"])
            }

    @property
    def patch_sizes(self) -> tuple[int, ...]:
        return tuple(self._parts)

    def _infer(self, patch, feeds, out_device):
        if patch not in self._parts:
            raise self._engine_missing(patch)
        given = {k: v.to(self.device) for k, v in feeds.items()}
        given[SIZE_INDEX] = torch.tensor([self._sizes[patch]], dtype=torch.int64, device=self.device)
        with torch.no_grad():
            return chain(self._parts[patch], given)[HEAD_OUTPUT].to(out_device)

    def close(self) -> None:
        self._parts = {}
        self.weights = {}
