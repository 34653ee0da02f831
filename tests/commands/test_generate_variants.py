"""`ddit-export generate` on FLUX.1-Fill / Kontext engines: --image and --mask through the folder's VAE,
and one-line refusals for image flags that do not fit the engines."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ddit_export.artifacts.manifest import read_manifest
from ddit_export.cli import main
from ddit_export.pipelines.registry import make_conditioning

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path / "image.png", tmp_path / "mask.png"


def test_fill_engines_inpaint_an_image_with_the_folders_vae(flux_variant_engines, images, tmp_path, capsys):
    image, mask = images
    out = tmp_path / "out"
    assert main(["generate", str(flux_variant_engines("fill")), "--steps", "3", "--image", str(image),
                 "--mask", str(mask), "--prompt", "a red fox", "--out", str(out)]) == 0
    trace = json.loads((out / "trace.json").read_text())
    assert trace["conditioning"].startswith("text encoders of ")
    assert f"condition_latent from {image} through the folder's VAE" in trace["conditioning"]
    assert Image.open(out / "image.png").size == (64, 64)
    manifest = read_manifest(flux_variant_engines("fill"))
    assert make_conditioning(manifest, "a", image=str(image), mask=str(mask)).guidance == 30.0  # the stock default
    # Another mask changes the result (the mask reaches the engines).
    Image.fromarray(np.full((64, 64), 255, dtype=np.uint8)).save(tmp_path / "all.png")
    assert main(["generate", str(flux_variant_engines("fill")), "--steps", "3", "--image", str(image),
                 "--mask", str(tmp_path / "all.png"), "--prompt", "a red fox", "--out", str(tmp_path / "o2")]) == 0
    assert not np.array_equal(np.asarray(Image.open(out / "image.png")),
                              np.asarray(Image.open(tmp_path / "o2" / "image.png")))


def test_image_flags_that_do_not_fit_are_refused_in_one_line(flux_variant_engines, tiny_flux_engines, images,
                                                             tmp_path, cli, capsys):
    image, mask = images
    fill, kontext = flux_variant_engines("fill"), flux_variant_engines("kontext")
    capsys.readouterr()  # the fixtures' progress output
    cases = [
        ([tiny_flux_engines, "--image", image], "--image does not apply to these engines (FluxPipeline model)"),
        ([kontext, "--image", image, "--mask", mask], "--mask does not apply to these engines (FluxKontextPipeline"),
        ([kontext], "these FluxKontextPipeline engines need --image: the reference image"),
        ([fill, "--image", image], "FLUX.1-Fill engines need --mask"),
        ([fill, "--image", tmp_path / "nope.png", "--mask", mask], "--image"),
    ]
    for args, message in cases:
        cli.refuses("generate", *args, "--out", tmp_path / "o", naming=(message,))
    assert not (tmp_path / "o").exists()
