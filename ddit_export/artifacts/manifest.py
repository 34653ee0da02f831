"""`manifest.json`: what an engine folder holds and how it was made.

One manifest per engine folder: the model (id, config, weights hash), the adapters, the static
geometry, the I/O spec shared by every engine, one entry per patch size per backend (file, sha256,
validation), tool versions and the scheduler defaults. Runtimes load engines from it alone.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import torch

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


def tool_versions() -> dict[str, str | None]:
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def read_manifest(folder) -> dict:
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
    return data


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
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


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
