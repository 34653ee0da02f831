"""`ddit-export flux` on FLUX variants and on folders as users keep them: the manifest records the grid
inputs, relative --model paths are stored absolute, `--variant` loads fp16-variant folders, and models or
layouts the engines cannot reproduce are refused in one line before loading weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ddit_export.artifacts.manifest import read_manifest
from ddit_export.cli import main
from tests.flux_variants import CONFIGS, pipeline_folder, tiny_transformer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

GEOMETRY = ["--height", "64", "--width", "64", "--text-len", "8", "--dtype", "fp32"]


@pytest.mark.parametrize("name, grid", [("control", ("condition_latent", [1, 16, 8, 8])),
                                        ("fill", ("condition_latent", [1, 80, 8, 8])),
                                        ("kontext", ("reference_latent", [1, 16, 8, 8]))])
def test_variant_engines_take_their_grid_input(flux_variant_engines, name, grid):
    manifest = read_manifest(flux_variant_engines(name))
    inputs = {t["name"]: t["shape"] for t in manifest["io"]["inputs"]}
    assert list(inputs)[-1] == grid[0] and inputs[grid[0]] == grid[1]
    assert manifest["latent_shape"] == [1, 16, 8, 8]  # the latent is out_channels / 4, whatever in_channels is
    assert [e["patch_size"] for e in manifest["engines"]] == [2, 4]
    assert all(e["validation"]["max_abs_err"] < 1e-4 for e in manifest["engines"])


def test_staged_layout_refuses_grid_conditioning_in_one_line(tmp_path, cli):
    model = tmp_path / "control"
    tiny_transformer("control").save_pretrained(model)
    cli.refuses("flux", "--model", model, *GEOMETRY, "--layout", "staged", "--out", tmp_path / "out",
                naming=("staged layout", "condition_latent", "--layout single"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config, words", [
    (dict(CONFIGS["control"], in_channels=100), ("in_channels=100", "supported:", "(Fill)")),
    ({**CONFIGS["control"], "_class_name": "WanTransformer3DModel"},
     ("WanTransformer3DModel", "FluxTransformer2DModel")),
])
def test_unsupported_model_is_one_line_before_loading(tmp_path, cli, config, words):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))  # no weights: the refusal comes first
    cli.refuses("flux", "--model", model, *GEOMETRY, "--out", tmp_path / "out", naming=words)


def test_relative_model_path_is_stored_absolute_and_found_from_elsewhere(tmp_path, tiny_flux_vae, monkeypatch):
    pipeline_folder(tmp_path / "work" / "pipe", "schnell", tiny_flux_vae)
    monkeypatch.chdir(tmp_path / "work")
    assert main(["flux", "--model", "pipe", "--patch-sizes", "2", *GEOMETRY, "--out", "engines"]) == 0
    engines = tmp_path / "work" / "engines"
    assert read_manifest(engines)["model"]["id"] == str(tmp_path / "work" / "pipe")
    monkeypatch.chdir(tmp_path)  # another folder: the text encoders, VAE and (torch backend) weights still load
    for backend in ("onnx", "torch"):
        out = tmp_path / f"out_{backend}"
        assert main(["generate", str(engines), "--steps", "2", "--backend", backend, "--out", str(out)]) == 0
        trace = json.loads((out / "trace.json").read_text())
        assert (out / "image.png").is_file() and trace["conditioning"].startswith("text encoders of ")


def test_a_missing_relative_model_is_named_as_a_path_not_a_hub_id(tmp_path, tiny_flux_engines, cli, monkeypatch):
    """Engines exported before paths were stored absolute: --backend torch says where it looked."""
    engines = tmp_path / "engines"
    shutil.copytree(tiny_flux_engines, engines)
    manifest = json.loads((engines / "manifest.json").read_text())
    manifest["model"]["id"] = "models/my-flux"
    (engines / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.chdir(tmp_path)
    err = cli.refuses("generate", engines, "--backend", "torch", "--out", tmp_path / "o",
                      naming=("models/my-flux", f"relative to {tmp_path}"))
    assert "hf download" in err  # still offered: the id may name a hub model


def test_fp16_variant_folder_needs_and_takes_variant(tmp_path, cli):
    model = tmp_path / "model"
    tiny_transformer("control").to(torch.float16).save_pretrained(model / "transformer", variant="fp16")
    out = tmp_path / "out"
    cli.refuses("flux", "--model", model, *GEOMETRY, "--out", out, naming=("fp16", "--variant fp16"))
    cli.refuses("flux", "--model", model, *GEOMETRY, "--variant", "bf16", "--out", out,
                naming=("no bf16 weights", "fp16"))
    assert main(["flux", "--model", str(model), "--variant", "fp16", "--patch-sizes", "2", *GEOMETRY,
                 "--out", str(out)]) == 0
    manifest = read_manifest(out)
    assert manifest["request"]["variant"] == "fp16"
    # The torch backend reloads the model the same way (same weights hash).
    assert main(["generate", str(out), "--steps", "1", "--backend", "torch", "--out", str(tmp_path / "g")]) == 0
