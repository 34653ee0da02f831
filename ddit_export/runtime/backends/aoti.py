"""AOTInductor backend: the `.pt2` packages of an engine folder, one per patch size.

A package is compiled for one device type; loading verifies each file's sha256 and that the
package was built for the device asked for, so a CPU package is never handed CUDA tensors.
"""

from __future__ import annotations

import torch

from ...artifacts.manifest import engine_entries, verify_entry
from .base import Backend, BackendError


def load_aoti(path, device: str | torch.device = "cpu"):
    """A callable taking the engine's keyword inputs and returning its prediction."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch._inductor.aoti_load_package(str(path), device_index=device.index or 0)
    return torch._inductor.aoti_load_package(str(path))


class AotiBackend(Backend):
    name = "aoti"

    def __init__(self, folder, manifest=None, device="cpu"):
        super().__init__(folder, manifest, device)
        entries = engine_entries(self.manifest, "aoti")
        if not entries:
            raise BackendError(f"{self.folder} has no AOTInductor packages: export with `--backends onnx,aoti`")
        self._runners = {}
        for patch, entry in sorted(entries.items()):
            if entry.get("device") != self.device.type:
                raise BackendError(
                    f"{entry['files'][0]} was compiled for {entry.get('device')}, not {self.device.type}: "
                    f"rebuild it on a {self.device.type} machine with `--backends onnx,aoti --force`"
                )
            verify_entry(self.folder, entry)
            self._runners[patch] = load_aoti(self.folder / entry["files"][0], self.device)

    @property
    def patch_sizes(self) -> tuple[int, ...]:
        return tuple(self._runners)

    def _infer(self, patch, feeds, out_device):
        runner = self._runners.get(patch)
        if runner is None:
            raise self._engine_missing(patch)
        with torch.no_grad():
            out = runner(**{k: v.to(self.device) for k, v in feeds.items()})
        return out.to(out_device)

    def close(self) -> None:
        self._runners = {}
