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
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..util.atomic import write_text_atomic
from ..util.memory import byte_chunks
from .iospec import IOSpec

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
TOOLS = ("ddit-export", "torch", "diffusers", "peft", "onnx", "onnxscript", "onnxruntime", "polygraphy")


class ManifestError(ValueError):
    """A manifest or an artifact it names is missing, malformed or altered."""


class BucketError(ValueError):
    """A resolution the folder has no engines for (bad input: the message lists the folder's buckets)."""


# Blocks fitted on a folder's engines that are kept per resolution bucket (`buckets[i][block]`; the default
# bucket's are the top-level ones). A bucket without its own inherits the default bucket's (docs/buckets.md).
BUCKET_BLOCKS = ("scheduler", "cache")


@dataclass(frozen=True)
class Bucket:
    """One resolution a folder serves: its engines take latents of `latent_shape`."""

    index: int
    height: int
    width: int
    latent_shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.height}x{self.width}"


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
        tensor = state_dict[key]
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        for block in byte_chunks(tensor):  # copies: `.numpy()` on the weights would pin them in memory
            digest.update(block)
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

    # -- resolution buckets ------------------------------------------------------------------------
    # The top-level keys (latent_shape, request height/width, engines, scheduler, cache) describe the
    # default bucket, so a reader that knows nothing of buckets sees a one-bucket folder. `buckets` lists
    # every bucket, the default first; the others carry their own `engines` (and fitted blocks).
    @property
    def buckets(self) -> list[Bucket]:
        rows = self.get("buckets") or [{"height": self["request"]["height"], "width": self["request"]["width"],
                                        "latent_shape": self["latent_shape"]}]  # folders from before buckets
        # The default bucket's shape is the top level's (a folder rewritten at another batch keeps its table).
        shapes = [self.get("bucket_root", self)["latent_shape"]] + [r["latent_shape"] for r in rows[1:]]
        return [Bucket(i, int(r["height"]), int(r["width"]), tuple(int(n) for n in shape))
                for i, (r, shape) in enumerate(zip(rows, shapes))]

    @property
    def bucket(self) -> Bucket:
        """The bucket this manifest (or bucket view) describes at the top level."""
        return self.buckets[int(self.get("bucket_index", 0))]

    def find_bucket(self, height: int | None = None, width: int | None = None) -> Bucket:
        """The bucket of `height` x `width` (None, None: the default); one line listing the buckets if absent."""
        buckets = self.buckets
        if height is None and width is None:
            return buckets[0]
        for b in buckets:
            if (b.height, b.width) == (height, width):
                return b
        asked = f"{height}x{width}" if height is not None and width is not None else \
            f"height {height} width {width}"
        raise BucketError(f"no engines for {asked}: this folder's resolution buckets are "
                          f"{', '.join(b.name for b in buckets)}; ask one of them, or export the folder again with "
                          f"--resolutions listing {asked}")

    def at_bucket(self, height: int | None = None, width: int | None = None) -> Manifest:
        """This manifest as seen by the engines of one bucket: its latent shape, geometry, engines, fitted blocks."""
        bucket = self.find_bucket(height, width)
        base = self.get("bucket_root", self)
        if bucket.index == 0:
            return base
        row = base["buckets"][bucket.index]
        view = Manifest({**base, "latent_shape": list(bucket.latent_shape), "engines": row["engines"], "io": row["io"],
                         "request": {**base["request"], "height": bucket.height, "width": bucket.width},
                         "bucket_index": bucket.index, "bucket_root": base})  # never written: a view
        for block in BUCKET_BLOCKS:
            if block in row:
                view[block] = row[block]
        return view

    @property
    def all_engines(self) -> list[dict]:
        """Every engine entry of every bucket (file checks, sizes on disk)."""
        root = self.get("bucket_root", self)
        return list(root["engines"]) + [e for row in (root.get("buckets") or [])[1:] for e in row["engines"]]


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
    return _buckets_problem(data)


def _buckets_problem(data: dict) -> str | None:
    """The bucket table: the default bucket is the top level; every other one has every size's engines."""
    rows = data.get("buckets")
    if rows is None:
        return None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return "'buckets' must be a non-empty list of objects"
    for i, row in enumerate(rows):
        if not all(isinstance(row.get(k), int) and row[k] > 0 for k in ("height", "width")) or \
                not isinstance(row.get("latent_shape"), list):
            return f"bucket {i} needs positive 'height', 'width' and a 'latent_shape'"
    kinds = sorted({e["backend"] for e in data["engines"]})
    for row in rows[1:]:
        engines = row.get("engines")
        if not isinstance(engines, list) or not isinstance(row.get("io"), dict):
            return f"bucket {row['height']}x{row['width']} lists no 'engines' or no 'io'"
        problem = _structure_problem({**data, "engines": engines, "latent_shape": row["latent_shape"],
                                      "buckets": None})
        if problem:
            return f"bucket {row['height']}x{row['width']}: {problem}"
        if sorted({e["backend"] for e in engines}) != kinds:
            return f"bucket {row['height']}x{row['width']} has other backends than the default bucket ({kinds})"
    return None


def write_manifest(folder, manifest: dict) -> Path:
    """Write ``manifest`` into ``folder`` completely or not at all."""
    if "bucket_root" in manifest:
        raise ValueError("a bucket view of a manifest cannot be written (a bug): write the folder's manifest")
    return write_text_atomic(Path(folder) / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def update_scheduler(folder, expected: dict, changes: dict, doing: str = "calibrating") -> Path:
    """Set keys of the manifest's scheduler defaults (a calibration's tau, rho and record)."""
    return update_block(folder, expected, "scheduler", changes, doing)


def update_block(folder, expected: dict, block: str, changes: dict, doing: str = "calibrating") -> Path:
    """Set keys of one top-level block of the manifest ("scheduler", "cache"), atomically.

    Refuses when the manifest changed since ``expected`` was read (a re-export meanwhile). A bucket view
    (`Manifest.at_bucket`) updates that bucket's own block (the default bucket's is the top-level one).
    """
    current = read_manifest(folder)
    index = int(expected.get("bucket_index", 0))
    if current.get("created") != expected.get("created") or \
            current.at_bucket(*_size_of(current, index))["engines"] != expected["engines"]:
        raise ManifestError(f"{Path(folder) / MANIFEST} changed while {doing} (re-exported?); run it again")
    if index == 0:
        current[block] = {**current.get(block, {}), **changes}
    else:  # a bucket's first fit starts from what it inherited
        row = current["buckets"][index]
        row[block] = {**row.get(block, current.get(block, {})), **changes}
    return write_manifest(folder, current)


def _size_of(manifest: Manifest, index: int) -> tuple[int, int]:
    bucket = manifest.buckets[index] if index < len(manifest.buckets) else manifest.buckets[0]
    return bucket.height, bucket.width


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
