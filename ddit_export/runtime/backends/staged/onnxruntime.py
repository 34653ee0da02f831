"""ONNX Runtime backend of a staged folder: embed[P] -> ONE trunk session -> head[P].

The trunk graph has a symbolic token axis, so one session serves every size and holds the block
weights once (chosen by measurement over per-size static graphs sharing weights: docs/staged.md).
The size-independent weights that every embed and head repeat (time/text embeddings, output norm)
are handed to their sessions once (`ort_shared_weights.py`). Values pass between the parts by name;
each part takes the names its graph declares. Same interface as the single layout's backend.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import torch

from ....artifacts.layouts import PARTS
from ....artifacts.manifest import engine_entries, verify_entry
from ...loras.onnx_weights import OnnxLoraWeights
from ..base import Backend, BackendError
from ..onnxruntime import CPU_PROVIDER, from_numpy, to_numpy
from ..ort_shared_weights import SharedWeights, ortvalue
from .calls import SIGNAL_WEIGHTS, StagedCalls

SPLIT_PARTS = ("first_block", "other_blocks")  # the trunk split after block 0 (export --first-block-split)


class OnnxStagedChain:
    """The sessions of a staged folder, every resolution bucket's, and the chain that runs them on numpy feeds.

    The trunk is one session for every bucket and size (one graph with a symbolic token axis); each bucket
    adds its embed/head sessions, whose weights that repeat across sizes and buckets (everything but the
    bucket's RoPE tables) are handed in once (`SharedWeights`, matched by content).
    """

    def __init__(self, folder, manifest: dict, providers=(CPU_PROVIDER,), prepack_trunk: bool | None = None,
                 verify: bool = True):
        """`verify=False` only for the export's own validation, before the files are hashed."""
        folder = Path(folder)
        manifest = manifest.get("bucket_root", manifest)  # a bucket view: load every bucket, run any
        per_bucket = [engine_entries(manifest, "onnx")] + [engine_entries({"engines": row["engines"]}, "onnx")
                                                           for row in (manifest.get("buckets") or [])[1:]]
        if not per_bucket[0]:
            raise BackendError(f"{folder}: the manifest lists no onnx staged engines; export them first")
        ort_choice = manifest.get("staged", {}).get("onnxruntime", {})
        prepack = ort_choice.get("prepacking", True) if prepack_trunk is None else prepack_trunk
        files = {}
        # `export --first-block-split`: block 0 and blocks 1..N as two more shared graphs, after the three parts
        self.first_block_split = bool(manifest.get("staged", {}).get("first_block_split"))
        hashed = {}
        for bucket, entries in enumerate(per_bucket):
            for patch, entry in entries.items():
                hashed.update(zip(entry["files"], entry["sha256"]))  # a shared file (the trunk) is checked once
                files[bucket, patch] = dict(zip(PARTS, (folder / f for f in entry["files"][:3])))
                if self.first_block_split:
                    files[bucket, patch].update(zip(SPLIT_PARTS, (folder / f for f in entry["files"][3:5])))
        if verify:
            verify_entry(folder, {"files": list(hashed), "sha256": list(hashed.values())})
        small = sorted({f for per in files.values() for k, f in per.items() if k in ("embed", "head")})
        self.shared = SharedWeights(small)
        self.sessions, self.inputs, self.outputs = {}, {}, {}
        self._small, self._prepack, self._providers = set(small), prepack, list(providers)
        self._overrides: dict[Path, dict] = {}
        # the shared graphs, the ones a user LoRA changes: the whole trunk first, then its split halves
        self.trunk_graphs = sorted({per["trunk"] for per in files.values()}) + sorted(
            {f for per in files.values() for k, f in per.items() if k in SPLIT_PARTS})
        for path in small + self.trunk_graphs:
            self._open(path)
        self.files = files
        self.size_index = {int(p): i for i, p in enumerate(manifest["patch_sizes"])}
        # The user LoRAs the trunk runs with: state of the chain, since every bucket's backend shares it.
        self.lora_specs, self.lora_touched = (), frozenset()

    def _open(self, path: Path, overrides: dict | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if path in self._small:
            self.shared.apply(options, path)
        elif not self._prepack:
            options.add_session_config_entry("session.disable_prepacking", "1")
        values = {name: ortvalue(array) for name, array in (overrides or {}).items()}
        for name, value in values.items():
            options.add_initializer(name, value)
        session = ort.InferenceSession(str(path), options, providers=self._providers)
        # the arrays (and their OrtValues) must outlive the session: ORT borrows their memory
        self._overrides[path] = (overrides, values) if overrides else None
        self.sessions[path] = session
        self.inputs[path] = [i.name for i in session.get_inputs()]
        self.outputs[path] = [o.name for o in session.get_outputs()]

    def reopen(self, path: Path, overrides: dict) -> None:
        """The session of `path` again, its initializers `overrides` (name -> array) replaced; `{}`: as the file."""
        self.sessions.pop(path, None)  # the old session's memory goes before the new one is made
        self._overrides.pop(path, None)
        self._open(path, overrides)

    def sizes(self, bucket: int = 0) -> tuple[int, ...]:
        return tuple(sorted(p for b, p in self.files if b == bucket))

    def run(self, patch: int, given: dict[str, np.ndarray], bucket: int = 0) -> dict[str, np.ndarray]:
        """Every named value of one call at `patch` in `bucket` (the prediction included)."""
        values = dict(given)
        values["size_index"] = np.array([self.size_index[patch]], dtype=np.int64)
        for part in PARTS:
            values.update(self.run_part(patch, part, values, bucket))
        return values

    def run_part(self, patch: int, part: str, values: dict[str, np.ndarray], bucket: int = 0) -> dict[str, np.ndarray]:
        """The outputs of one part at `patch` in `bucket`, by name (it reads the inputs its graph declares)."""
        path = self.files[bucket, patch][part]
        out = self.sessions[path].run(self.outputs[path], {n: values[n] for n in self.inputs[path]})
        return dict(zip(self.outputs[path], out))

    def close(self) -> None:
        self.sessions.clear()


# One chain per folder and session settings in a process, shared by every bucket's backend (a server that
# serves three buckets holds the trunk once); released when the last backend using it closes.
_CHAINS: dict[tuple, list] = {}
_CHAINS_LOCK = threading.Lock()


def shared_chain(folder: Path, manifest: dict, prepack_trunk: bool | None) -> tuple[tuple, OnnxStagedChain]:
    root = manifest.get("bucket_root", manifest)
    key = (str(Path(folder).resolve()), root.get("created"), json.dumps(root["engines"], sort_keys=True)[:4096],
           prepack_trunk)
    with _CHAINS_LOCK:
        held = _CHAINS.get(key)
        if held is None:
            held = _CHAINS[key] = [OnnxStagedChain(folder, manifest, prepack_trunk=prepack_trunk), 0]
        held[1] += 1
        return key, held[0]


def release_chain(key: tuple) -> None:
    with _CHAINS_LOCK:
        held = _CHAINS.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            held[0].close()
            del _CHAINS[key]


def onnx_initializers(path: Path, names) -> dict[str, torch.Tensor]:
    """Named initializers of an ONNX file (external data read from beside it) as torch tensors."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    found = {t.name: t for t in model.graph.initializer if t.name in set(names)}
    missing = [n for n in names if n not in found]
    if missing:
        raise BackendError(f"{path} has no initializer {missing[0]}: re-export the folder with --layout staged")
    return {n: torch.from_numpy(numpy_helper.to_array(found[n], base_dir=str(path.parent)).copy()) for n in names}


class OnnxStagedBackend(OnnxLoraWeights, StagedCalls, Backend):
    """`get_backend("onnx", staged_folder)`: the same call as for single engines, run as a chain."""

    name = "onnx"

    def __init__(self, folder, manifest=None, device="cpu", *, prepack_trunk: bool | None = None, **_ignored):
        super().__init__(folder, manifest, device)
        if self.device.type != "cpu":
            raise BackendError("the staged onnx backend runs on the CPU execution provider; use --backend trt on CUDA")
        self._chain_key, self.chain = shared_chain(self.folder, self.manifest, prepack_trunk)
        self.bucket = self.manifest.bucket.index
        self.first_block_split = self.chain.first_block_split
        self._output = self.io_spec.output_names[0]

    @property
    def patch_sizes(self) -> tuple[int, ...]:
        return self.chain.sizes(self.bucket)

    def _infer(self, patch: int, feeds: dict[str, torch.Tensor], out_device: torch.device) -> torch.Tensor:
        if (self.bucket, patch) not in self.chain.files:
            raise self._engine_missing(patch)
        values = self.chain.run(patch, {n: to_numpy(v) for n, v in feeds.items()}, self.bucket)
        return from_numpy(values[self._output]).to(out_device)

    # -- the parts one at a time (step caching: calls.py) ----------------------------------
    def _start(self, patch, feeds):
        return {**feeds, "size_index": torch.tensor([self.chain.size_index[patch]], dtype=torch.int64)}

    def _part(self, patch, part, values):
        if part not in PARTS:
            self._require_split()
        out = self.chain.run_part(patch, part, {n: to_numpy(v) for n, v in values.items()}, self.bucket)
        return {**values, **{n: from_numpy(v) for n, v in out.items()}}

    def signal_weights(self):
        return onnx_initializers(self.chain.files[self.bucket, self.patch_sizes[0]]["trunk"], SIGNAL_WEIGHTS)

    # -- user LoRAs: the trunk's initializers replaced, its sessions rebuilt (loras/onnx_weights.py) -------
    # The set lives on the chain: the backends of every resolution bucket share its trunk, so they share it.
    @property
    def _lora_specs(self):
        return self.chain.lora_specs

    @_lora_specs.setter
    def _lora_specs(self, specs):
        self.chain.lora_specs = specs

    @property
    def _lora_touched(self):
        return self.chain.lora_touched

    @_lora_touched.setter
    def _lora_touched(self, modules):
        self.chain.lora_touched = modules

    def _lora_graphs(self):
        return self.chain.trunk_graphs

    def _lora_rewrite(self, path, overrides):
        self.chain.reopen(path, overrides)

    def close(self) -> None:
        if self._chain_key is not None:
            release_chain(self._chain_key)
            self._chain_key = None
