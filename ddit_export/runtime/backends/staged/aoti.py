"""AOTInductor backend of a staged folder: packages without weights, all given the same tensors.

`staged/weights.safetensors` is read once; every package (embed, head and the trunk of each size)
gets its constants pointed at those tensors (`load_constants(..., user_managed=True)`), so every
size together holds one set of weights. Same interface as the single layout's backend.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch

from ....artifacts.layouts import PART_PREFIX, PARTS, WEIGHTS, part_prefix
from ....artifacts.manifest import verify_entry
from ....ddit.staged import HEAD_OUTPUT, SIZE_INDEX, chain, run_part
from ...loras.torch_weights import TorchLoraWeights
from ..base import Backend, BackendError
from .calls import StagedCalls, find_weights


def load_shared_weights(path: Path, device) -> dict[str, torch.Tensor]:
    """name -> tensor for every name of the staged model; aliases share one tensor."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as fh:
        aliases = json.loads(fh.metadata()["aliases"])
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    return {name: tensors[first] for name, first in aliases.items()}


def load_part(path: Path, part: str, patch: int, weights: dict[str, torch.Tensor], device, bucket: str | None = None):
    """A compiled part with its constants pointed at the shared tensors (no copy); `bucket`: an extra
    resolution bucket's name (its embeds/heads have their own names in the weights file)."""
    device = torch.device(device)
    if device.type == "cuda":
        runner = torch._inductor.aoti_load_package(str(path), device_index=device.index or 0)
    else:
        runner = torch._inductor.aoti_load_package(str(path))
    prefix = part_prefix(part, patch, bucket)
    constants = {fqn: weights[prefix + fqn] for fqn in runner.get_constant_fqns()}
    runner.load_constants(constants, check_full_update=True, user_managed=True)
    return runner


def as_kwargs(runner):
    """AOTInductor runners take the exported kwargs; a part returning one tensor returns it alone."""
    def run(**inputs):
        out = runner(**inputs)
        return out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out
    return run


class AotiStagedBackend(TorchLoraWeights, StagedCalls, Backend):
    name = "aoti"

    def __init__(self, folder, manifest=None, device="cpu"):
        super().__init__(folder, manifest, device)
        entries = self.manifest.engines_of("aoti")
        onnx = self.manifest.engines_of("onnx")
        if not entries:
            raise BackendError(f"{self.folder} has no AOTInductor packages: export with `--backends onnx,aoti`")
        for entry in entries.values():
            if entry.get("device") != self.device.type:
                raise BackendError(
                    f"{entry['files'][0]} was compiled for {entry.get('device')}, not {self.device.type}: "
                    f"rebuild it on a {self.device.type} machine with `--backends onnx,aoti --force`"
                )
            verify_entry(self.folder, entry)
        # One weights file for every bucket: loaded once per process and device, whichever bucket comes first.
        self._weights_key, self.weights = shared_weights(self.folder / WEIGHTS, self.device)
        bucket = self.manifest.bucket
        name = bucket.name if bucket.index else None
        self._sizes = {int(p): i for i, p in enumerate(self.manifest.patch_sizes)}
        self._parts = {}
        for p, entry in sorted(entries.items()):
            io = onnx[p]["parts_io"]  # the parts' input and output names (same graphs' signatures)
            self._parts[p] = {
                part: (as_kwargs(load_part(self.folder / rel, part, p, self.weights, self.device, name)),
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

    # -- the parts one at a time (step caching: calls.py) ----------------------------------
    def _start(self, patch, feeds):
        given = {k: v.to(self.device) for k, v in feeds.items()}
        given[SIZE_INDEX] = torch.tensor([self._sizes[patch]], dtype=torch.int64, device=self.device)
        return given

    def _part(self, patch, part, values):
        if part not in self._parts[patch]:
            self._require_split()
        with torch.no_grad():
            return run_part(self._parts[patch][part], values)

    def signal_weights(self):
        return find_weights(self.weights)

    def _lora_tensors(self):
        # The trunk's linear weights among the shared tensors every package points at (user-managed
        # constants): written in place, every size's trunk package reads the new weights, nothing recompiles.
        prefix = PART_PREFIX["trunk"]
        return {name[len(prefix):-len(".weight")].removesuffix(".base"): t for name, t in self.weights.items()
                if name.startswith(prefix) and name.endswith(".weight") and t.ndim == 2}

    def close(self) -> None:
        self._parts = {}
        self.weights = {}
        if self._weights_key is not None:
            release_weights(self._weights_key)
            self._weights_key = None


# Shared by every bucket's backend in a process (one set of weights for every package); released with the last.
_WEIGHTS: dict[tuple, list] = {}
_WEIGHTS_LOCK = threading.Lock()


def shared_weights(path: Path, device) -> tuple[tuple, dict[str, torch.Tensor]]:
    key = (str(Path(path).resolve()), Path(path).stat().st_mtime_ns, str(device))
    with _WEIGHTS_LOCK:
        held = _WEIGHTS.get(key)
        if held is None:
            held = _WEIGHTS[key] = [load_shared_weights(path, device), 0]
        held[1] += 1
        return key, held[0]


def release_weights(key: tuple) -> None:
    with _WEIGHTS_LOCK:
        held = _WEIGHTS.get(key)
        if held is not None:
            held[1] -= 1
            if held[1] <= 0:
                del _WEIGHTS[key]
