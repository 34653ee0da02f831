"""`set_loras` for a backend: check a LoRA set, then write the weights it gives, from the originals.

A backend that can take LoRAs mixes `LoraHost` in and says, for its own runtime, which linear layers
it holds (`_lora_targets`), what a layer's original weight is (`_lora_original`), and how to write
new full weights (`_lora_apply`). Everything is checked before anything is written: a refused set
leaves the engines as they were. Every set is computed from the originals, never on top of the
previous set; layers the new set does not touch get their originals back.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

import torch

from .files import LoraError, LoraFile, LoraSpec, as_spec, read_lora
from .merge import check_fits, merged_weight

CACHED_FILES = 8  # LoRA files kept parsed: a server switching between a few styles reads each once


class LoraHost:
    """Mixin: `set_loras([...])`, `loras`; subclasses implement the three `_lora_*` methods."""

    _lora_specs: tuple[LoraSpec, ...] = ()
    _lora_touched: frozenset = frozenset()
    lora_swap_seconds: float | None = None

    @property
    def loras(self) -> tuple[LoraSpec, ...]:
        """The LoRAs the engines now run with (empty: the original weights)."""
        return self._lora_specs

    def set_loras(self, loras) -> None:
        """Run with exactly these LoRAs: `[(file, scale), ...]`, paths or `LoraSpec`s; `[]` removes them all."""
        started = time.perf_counter()
        specs = tuple(as_spec(item) for item in (loras or ()))
        if specs == self._lora_specs:
            return
        files = self.check_loras(specs)
        terms: dict[str, list] = {}
        for spec, lora in zip(specs, files):
            for module, (a, b, scaling) in lora.factors.items():
                terms.setdefault(module, []).append((a, b, scaling * spec.scale))
        restore = sorted(self._lora_touched - terms.keys())
        self._lora_prepare(sorted(terms.keys() | set(restore)))
        merged = ((m, merged_weight(self._lora_original(m), terms[m])) for m in sorted(terms))
        self._lora_apply(merged, restore)
        self._lora_touched, self._lora_specs = frozenset(terms), specs
        self.lora_swap_seconds = time.perf_counter() - started

    def check_loras(self, loras) -> list[LoraFile]:
        """Read and check a LoRA set without applying it (LoraError, one line, if one does not fit)."""
        files = [self._read_lora(as_spec(item).path) for item in (loras or ())]
        targets = self._lora_targets()
        for lora in files:
            check_fits(lora, targets)
        return files

    def _read_lora(self, path: Path) -> LoraFile:
        cache = self.__dict__.setdefault("_lora_cache", OrderedDict())
        try:
            stat = path.stat()
        except OSError:
            return read_lora(path)  # says what is wrong with the path
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key not in cache:
            cache[key] = read_lora(path)
            while len(cache) > CACHED_FILES:
                cache.popitem(last=False)
        cache.move_to_end(key)
        return cache[key]

    # -- for subclasses ----------------------------------------------------------------------------
    def _lora_targets(self) -> dict[str, tuple[int, int]]:
        """module name (the diffusers transformer's) -> (out, in) of every linear layer a LoRA may change."""
        raise NotImplementedError

    def _lora_prepare(self, modules: list[str]) -> None:
        """Called once before a set is written with every module it reads (e.g. to read their originals at once)."""

    def _lora_original(self, module: str) -> torch.Tensor:
        """The module's weight as exported (out x in), in the engine's dtype."""
        raise NotImplementedError

    def _lora_apply(self, merged, restore: list[str]) -> None:
        """Write `merged` ((module, full weight) pairs, streamed) and give `restore`'s modules their originals."""
        raise NotImplementedError


def refuse_loras(backend_name: str, why: str):
    """`set_loras` of a backend that cannot take LoRAs: one line saying what to do instead."""
    def set_loras(self, loras) -> None:
        if loras:
            raise LoraError(f"the {backend_name} backend {why}")
    return set_loras
