"""Recipes: every shipped recipe is a valid request; flags override; bad recipes are refused clearly."""

from pathlib import Path

import pytest

from ddit_export.artifacts.manifest import read_manifest
from ddit_export.cli import main
from ddit_export.export.recipe import load_recipe
from ddit_export.export.request import ExportRequest

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_are_valid_requests(path):
    import yaml

    family = yaml.safe_load(path.read_text())["family"]
    settings = load_recipe(path, family)
    settings.pop("artifacts", None)  # trt is not installed here; the rest must validate
    req = ExportRequest(family=family, **settings)
    assert req.latent_shape[0] == req.batch


def test_flags_override_the_recipe_and_scheduler_defaults_reach_the_manifest(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("family: flux\nmodel: tiny\npatch_sizes: [2, 4]\nheight: 256\nwidth: 256\n"
                      "text_len: 8\ndtype: fp32\nscheduler: {tau: 0.02, rho: 0.5}\n")
    out = tmp_path / "e"
    assert main(["flux", "--recipe", str(recipe), "--height", "128", "--width", "128", "--out", str(out)]) == 0
    m = read_manifest(out)
    assert (m["request"]["height"], m["request"]["text_len"], m["dtype"]) == (128, 8, "fp32")
    assert (m["scheduler"]["tau"], m["scheduler"]["rho"]) == (0.02, 0.5)
    assert [e["patch_size"] for e in m["engines"]] == [2, 4]


@pytest.mark.parametrize("text, message", [
    ("family: wan\n", "is for `ddit-export wan`"),
    ("heigth: 10\n", "unknown key(s) ['heigth']"),
    ("- 1\n", "must be a mapping"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xd8", "not UTF-8 text"),
    ("height: 1024px\n", "'height' must be int"),
    ("patch_sizes: [2, four]\n", "'patch_sizes' must be a list of ints"),
    ("scheduler: [0.001]\n", "'scheduler' must be a mapping"),
    ("external_data: 3\n", "'external_data' must be bool"),
    ("backends: [onnx]\nartifacts: [onnx]\n", "gives both 'backends' and 'artifacts'"),
])
def test_bad_recipes_are_one_line_exit_2(tmp_path, capsys, text, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["flux", "--recipe", str(recipe), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(recipe) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_a_recipe_with_the_old_backends_key_still_loads_as_artifact_kinds(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("family: flux\nmodel: tiny\nbackends: [onnx]\n")
    assert load_recipe(recipe, "flux") == {"model": "tiny", "artifacts": ("onnx",)}
