"""torch.compile backend: the eager reference modules, each compiled once and reused every step.

Shapes are static (one module per patch size), so each size compiles exactly once, on its first
call, with `dynamic=False`. The mode is configurable; on CUDA `max-autotune` also captures CUDA
graphs. Compilation happens in-process: there is no artifact on disk.
"""

from __future__ import annotations

import torch

from .torch_eager import TorchEagerBackend


def default_mode(device: torch.device) -> str:
    return "max-autotune" if device.type == "cuda" else "default"


class TorchCompileBackend(TorchEagerBackend):
    name = "torch-compile"

    def __init__(self, folder, manifest=None, device="cpu", mode: str | None = None):
        super().__init__(folder, manifest, device)
        self.mode = mode or default_mode(self.device)
        self._engines = {p: torch.compile(m, mode=self.mode, dynamic=False, fullgraph=False)
                         for p, m in self._engines.items()}

    def warm_up(self, **conditioning) -> None:
        """Compile every size now (a first call each), so no step pays the compile time."""
        latent = torch.zeros(self.latent_shape, dtype=self.dtype, device=self.device)
        for patch in self.patch_sizes:
            self(patch, latent, **conditioning)
