"""LoRAs on torch modules (eager, torch.compile, AOTInductor's user-managed constants): in-place writes.

The weight tensors are updated in place (`copy_`), so every graph that reads them (compiled code
takes parameters as inputs; AOTInductor packages point at the same tensors) sees the new weights
without recompiling. A weight's original is kept on disk, not in memory, the first time a LoRA
touches it (a temporary safetensors file per layer, read back when a set no longer touches the
layer or a new set needs it): resident memory does not grow with the LoRAs beyond their factors.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .host import LoraHost


class SpilledOriginals:
    """module -> its original weight, saved to a temporary folder the first time it is asked for."""

    def __init__(self):
        self._dir: tempfile.TemporaryDirectory | None = None
        self._files: dict[str, Path] = {}

    def get(self, module: str, live: torch.Tensor) -> torch.Tensor:
        """The original of `module`; `live` is its weight now (the original, if never saved before)."""
        from safetensors import safe_open
        from safetensors.torch import save_file

        if module not in self._files:
            if self._dir is None:
                self._dir = tempfile.TemporaryDirectory(prefix="ddit-lora-originals-")
            path = Path(self._dir.name) / f"{len(self._files)}.safetensors"
            save_file({"weight": live.detach().contiguous().cpu()}, str(path))
            self._files[module] = path
            return live.detach()
        with safe_open(str(self._files[module]), framework="pt", device=str(live.device)) as fh:
            return fh.get_tensor("weight")


class TorchLoraWeights(LoraHost):
    """Mixin for backends whose linear weights are torch tensors; subclasses give `_lora_tensors()`."""

    def _lora_tensors(self) -> dict[str, torch.Tensor]:
        """module name -> its live weight tensor (out x in)."""
        raise NotImplementedError

    def _lora_written(self) -> None:
        """Called after weights changed (e.g. AOTInductor re-points its constants); nothing by default."""

    def _lora_targets(self):
        return {m: tuple(t.shape) for m, t in self._lora_tensors().items()}

    def _lora_original(self, module):
        originals = self.__dict__.setdefault("_lora_originals", SpilledOriginals())
        return originals.get(module, self._lora_tensors()[module])

    def _lora_apply(self, merged, restore):
        live = self._lora_tensors()
        with torch.no_grad():
            for module, weight in merged:
                live[module].copy_(weight)
            for module in restore:
                live[module].copy_(self._lora_original(module))
        self._lora_written()


def linear_tensors(root: torch.nn.Module) -> dict[str, torch.Tensor]:
    """module name -> weight of every nn.Linear under `root` (a stacked-adapter layer's `.base` dropped)."""
    return {name.removesuffix(".base"): mod.weight for name, mod in root.named_modules()
            if isinstance(mod, torch.nn.Linear)}
