"""`manifest.json`: what an engine folder holds and how it was made.

One manifest per engine folder: the model (id, config, weights hash), the adapters, the static
geometry, the I/O spec shared by every engine, one entry per patch size per backend (file, sha256,
validation), tool versions and the scheduler defaults. Runtimes load engines from it alone.

This module is the manifest's one reader (`read_manifest`, which checks the structure and returns a
typed `Manifest`) and its one writer (`write_manifest` for an export, `update_scheduler` for a
calibration), both atomic. The file format is `MANIFEST_FORMAT`; a new key is added here, with a
default for folders written before it.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import torch

from ..util.atomic import write_text_atomic
from .iospec import IOSpec

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
TOOLS = ("ddit-export", "torch", "diffusers", "peft", "onnx", "onnxscript", "onnxruntime", "polygraphy")


class ManifestError(ValueError):
    """A manifest or an artifact it names is missing, malformed or altered."""


def sha256_file(path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_tensors(state_dict) -> str:
    """Content hash of a state dict (keys, dtypes, shapes and bytes), whatever its source format."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().contiguous().cpu()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def config_hash(config) -> str:
    """Content hash of a diffusers config, ignoring bookkeeping keys (paths, library version)."""
    clean = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    text = json.dumps(clean, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tool_versions() -> dict[str, str | None]:
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class Manifest(dict):
    """A checked manifest: typed accessors over the JSON object (still a dict, so it is written back as read).

    Readers use the properties; the keys not given one here (validation results, tool versions, the
    staged layout's extras) are read as the JSON has them.
    """

    @property
    def family(self) -> str:
        return self["family"]

    @property
    def layout(self) -> str:
        return self.get("layout", "single")  # folders from before layouts are single

    @property
    def model_id(self) -> str:
        return self["model"]["id"]

    @property
    def model_config(self) -> dict:
        return self["model"]["config"]

    @property
    def base_patch(self) -> int:
        return int(self["base_patch"])

    @property
    def patch_sizes(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self["patch_sizes"])

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self["latent_shape"])

    @property
    def dtype(self) -> str:
        """The engines' precision name ("fp32", "fp16", "bf16"; artifacts/dtypes.py)."""
        return self["dtype"]

    @property
    def text_len(self) -> int:
        return int(self["request"]["text_len"])

    @property
    def io(self) -> IOSpec:
        """The inputs and outputs every engine of the folder shares."""
        return IOSpec.from_json(self["io"])

    @property
    def scheduler(self) -> dict:
        """The engines' default schedule (tau, rho, rule, warm-up, calibration)."""
        return self["scheduler"]

    @property
    def artifact_kinds(self) -> list[str]:
        """The kinds of engine files the folder holds ("onnx", "aoti", "trt"), in build order."""
        return list(dict.fromkeys(e["backend"] for e in self["engines"]))

    @property
    def tokens(self) -> dict[int, int]:
        """patch size -> the tokens one engine call at that size processes (padding included)."""
        return {int(e["patch_size"]): int(e["tokens"]) for e in self["engines"]}

    def engines_of(self, kind: str) -> dict[int, dict]:
        """patch size -> engine entry, for one artifact kind."""
        return engine_entries(self, kind)


def read_manifest(folder) -> Manifest:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{folder} has no {MANIFEST}: build engines there first with `ddit-export flux ...`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path} is not valid UTF-8 JSON ({err}); rebuild the folder with --force") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path} must hold a JSON object; rebuild the folder with --force")
    if data.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{path}: manifest format {data.get('format')} is not {MANIFEST_FORMAT}; rebuild")
    problem = _structure_problem(data)
    if problem:
        raise ManifestError(f"{path} is inconsistent: {problem}; rebuild the folder with --force")
    return Manifest(data)


# key -> the JSON type every runtime relies on (a damaged manifest is refused, not half-used).
REQUIRED = {"family": str, "request": dict, "model": dict, "adapters": dict, "base_patch": int, "patch_sizes": list,
            "latent_shape": list, "dtype": str, "io": dict, "engines": list, "scheduler": dict, "tools": dict}
ENTRY_REQUIRED = {"patch_size": int, "backend": str, "files": list, "sha256": list}


def _structure_problem(data: dict) -> str | None:
    """What makes a manifest unusable, or None: missing keys, wrong types, sizes that disagree."""
    for key, kind in REQUIRED.items():
        if not isinstance(data.get(key), kind):
            return f"'{key}' is missing or not a {kind.__name__}"
    if not all(isinstance(p, int) and p > 0 for p in data["patch_sizes"]) or not data["patch_sizes"]:
        return f"'patch_sizes' must be positive integers (got {data['patch_sizes']})"
    if data["base_patch"] not in data["patch_sizes"]:
        return f"the base patch {data['base_patch']} is not among patch_sizes {data['patch_sizes']}"
    if not all(isinstance(n, int) and n > 0 for n in data["latent_shape"]):
        return f"'latent_shape' must be positive integers (got {data['latent_shape']})"
    if not isinstance(data["io"].get("inputs"), list) or not isinstance(data["io"].get("outputs"), list):
        return "'io' needs 'inputs' and 'outputs' lists"
    for entry in data["engines"]:
        if not isinstance(entry, dict):
            return "an 'engines' entry is not an object"
        for key, kind in ENTRY_REQUIRED.items():
            if not isinstance(entry.get(key), kind):
                return f"an engine entry's '{key}' is missing or not a {kind.__name__}"
        if len(entry["files"]) != len(entry["sha256"]) or not entry["files"]:
            return f"engine p{entry['patch_size']} ({entry['backend']}) lists {len(entry['files'])} files " \
                   f"and {len(entry['sha256'])} hashes"
    for backend in sorted({e["backend"] for e in data["engines"]}):  # each backend built every size, or is absent
        sizes = sorted(e["patch_size"] for e in data["engines"] if e["backend"] == backend)
        if sizes != sorted(data["patch_sizes"]):
            return f"patch_sizes {sorted(data['patch_sizes'])} but {backend} engines for {sizes}"
    strays = sorted({e["patch_size"] for e in data["engines"]} - set(data["patch_sizes"]))
    if strays:
        return f"engine entries for sizes {strays} that patch_sizes does not list"
    return None


def write_manifest(folder, manifest: dict) -> Path:
    """Write ``manifest`` into ``folder`` completely or not at all."""
    return write_text_atomic(Path(folder) / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def update_scheduler(folder, expected: dict, changes: dict, doing: str = "calibrating") -> Path:
    """Set keys of the manifest's scheduler defaults (a calibration's tau, rho and record)."""
    return update_block(folder, expected, "scheduler", changes, doing)


def update_block(folder, expected: dict, block: str, changes: dict, doing: str = "calibrating") -> Path:
    """Set keys of one top-level block of the manifest ("scheduler", "cache"), atomically.

    Refuses when the manifest changed since ``expected`` was read (a re-export meanwhile).
    """
    current = read_manifest(folder)
    if current.get("created") != expected.get("created") or current["engines"] != expected["engines"]:
        raise ManifestError(f"{Path(folder) / MANIFEST} changed while {doing} (re-exported?); run it again")
    current[block] = {**current.get(block, {}), **changes}
    return write_manifest(folder, current)


def engine_entries(manifest: dict, backend: str) -> dict[int, dict]:
    """patch size -> engine entry for one backend."""
    return {int(e["patch_size"]): e for e in manifest["engines"] if e["backend"] == backend}


def artifact_paths(folder, entry: dict) -> list[Path]:
    return [Path(folder) / f for f in entry["files"]]


def verify_entry(folder, entry: dict) -> None:
    """Refuse an artifact whose bytes are not those the manifest recorded."""
    for rel, expected in zip(entry["files"], entry["sha256"]):
        path = Path(folder) / rel
        if not path.is_file():
            raise ManifestError(f"{path} named in the manifest is missing; rebuild with --force")
        actual = sha256_file(path)
        if actual != expected:
            raise ManifestError(
                f"{path} does not match its manifest (sha256 {actual[:12]}... != {expected[:12]}...): "
                "the file was altered or replaced; rebuild with --force"
            )
    for rel in entry["files"]:  # a short weights file whose hash was rewritten to match still fails here
        if rel.endswith(".onnx"):
            from .onnx_data import external_data_problem

            problem = external_data_problem(Path(folder) / rel)
            if problem:
                raise ManifestError(f"{problem}: the engine folder is damaged; rebuild with --force")
