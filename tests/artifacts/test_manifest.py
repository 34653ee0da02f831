"""artifacts/manifest.py, the engine-folder contract: `read_manifest` -> typed `Manifest`, `write_manifest`,
`update_scheduler`, `verify_entry`, and the refusals of a manifest no runtime could use. The folder is the
one exported by the old code (tests/data/engines_v0_flux_tiny), so every check also holds for old folders."""

import json
import shutil
from pathlib import Path

import pytest

from ddit_export.artifacts.iospec import IOSpec
from ddit_export.artifacts.manifest import (
    MANIFEST,
    Manifest,
    ManifestError,
    read_manifest,
    update_scheduler,
    verify_entry,
    write_manifest,
)

LEGACY = Path(__file__).parent.parent / "data" / "engines_v0_flux_tiny"


@pytest.fixture
def folder(tmp_path):
    copy = tmp_path / "engines"
    shutil.copytree(LEGACY, copy)
    return copy


def _raw(folder) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def test_an_old_folder_reads_as_a_typed_manifest(folder):
    manifest = read_manifest(folder)
    raw = _raw(folder)
    assert isinstance(manifest, Manifest) and dict(manifest) == raw  # a dict as the JSON has it, nothing added
    assert manifest.family == "flux" and manifest.layout == "single" and manifest.dtype == raw["dtype"]
    assert manifest.patch_sizes == (2, 4) and manifest.base_patch == 2 and manifest.latent_shape == (1, 16, 8, 8)
    assert manifest.model_id == raw["model"]["id"] and manifest.model_config == raw["model"]["config"]
    assert manifest.text_len == raw["request"]["text_len"]
    assert isinstance(manifest.io, IOSpec) and manifest.io.input_names[0] == "latent"
    assert manifest.artifact_kinds == ["onnx"] and manifest.tokens == {2: 16, 4: 4}
    assert sorted(manifest.engines_of("onnx")) == [2, 4] and manifest.engines_of("trt") == {}
    assert manifest.scheduler["tau"] == raw["scheduler"]["tau"]


def test_a_folder_without_the_layout_key_is_single(folder):
    raw = _raw(folder)
    del raw["layout"]  # folders from before layouts
    (folder / MANIFEST).write_text(json.dumps(raw))
    assert read_manifest(folder).layout == "single"


def test_write_then_read_gives_back_the_same_manifest_and_leaves_no_temporary_file(folder, tmp_path):
    manifest = read_manifest(folder)
    out = tmp_path / "copy"
    out.mkdir()
    assert write_manifest(out, manifest) == out / MANIFEST
    assert read_manifest(out) == manifest and sorted(p.name for p in out.iterdir()) == [MANIFEST]


def test_update_scheduler_changes_only_its_keys(folder):
    before = read_manifest(folder)
    update_scheduler(folder, before, {"tau": 0.5, "calibration": {"budget": 1}})
    after = read_manifest(folder)
    assert after.scheduler == {**before.scheduler, "tau": 0.5, "calibration": {"budget": 1}}
    assert {k: v for k, v in after.items() if k != "scheduler"} == {k: v for k, v in before.items()
                                                                     if k != "scheduler"}


@pytest.mark.parametrize("change", [lambda m: m.update(created="later"), lambda m: m["engines"].pop()])
def test_update_scheduler_refuses_a_manifest_that_changed_meanwhile(folder, change):
    read_before = read_manifest(folder)
    raw = _raw(folder)
    change(raw)  # a re-export between the read and the update
    raw["patch_sizes"] = sorted({e["patch_size"] for e in raw["engines"]})
    (folder / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="changed while calibrating"):
        update_scheduler(folder, read_before, {"tau": 0.5})
    assert _raw(folder) == raw  # untouched


@pytest.mark.parametrize("damage, words", [
    (lambda m: m.update(format=2), "manifest format 2 is not 1"),
    (lambda m: m.update(base_patch=8), "base patch 8 is not among patch_sizes"),
    (lambda m: m["engines"][0]["sha256"].append("x"), "lists 1 files and 2 hashes"),
    (lambda m: m["engines"].append({**m["engines"][0], "patch_size": 8}), "onnx engines for [2, 4, 8]"),
    (lambda m: m.update(family=3), "'family' is missing or not a str"),
    (lambda m: m["io"].pop("outputs"), "'io' needs 'inputs' and 'outputs' lists"),
])
def test_an_unusable_manifest_is_refused_naming_the_problem(folder, damage, words):
    raw = _raw(folder)
    damage(raw)
    (folder / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ManifestError) as caught:
        read_manifest(folder)
    assert str(folder / MANIFEST) in str(caught.value) and words in str(caught.value)


def test_a_folder_without_a_manifest_says_how_to_make_one(tmp_path):
    with pytest.raises(ManifestError, match="has no manifest.json: build engines there first"):
        read_manifest(tmp_path)


def test_verify_entry_refuses_a_missing_or_altered_file(folder):
    entry = read_manifest(folder).engines_of("onnx")[2]
    verify_entry(folder, entry)  # as exported
    graph = folder / entry["files"][0]
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="does not match its manifest"):
        verify_entry(folder, entry)
    graph.unlink()
    with pytest.raises(ManifestError, match="named in the manifest is missing"):
        verify_entry(folder, entry)


def test_hashing_the_weights_does_not_pin_them_in_memory():
    """`sha256_tensors` reads copies: `.numpy()` on a weight makes torch refuse to resize its storage, and the
    export could not free the model before validation (a second copy of the weights, docs/export-memory.md).
    The digest is the one of the plain bytes, so stage keys of existing folders are unchanged."""
    import hashlib

    import torch

    from ddit_export.artifacts.manifest import sha256_tensors

    weights = {"w": torch.randn(300, 70), "h": torch.arange(5, dtype=torch.bfloat16)}
    digest = sha256_tensors(weights)
    assert all(t.untyped_storage().resizable() for t in weights.values())
    plain = hashlib.sha256()
    for key in sorted(weights):
        t = weights[key]
        plain.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        plain.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    assert digest == plain.hexdigest()
