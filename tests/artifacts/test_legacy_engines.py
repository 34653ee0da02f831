"""An engine folder exported before the restructure (tests/data/engines_v0_flux_tiny, made by the code of
commit 1b33269: `ddit-export flux --model tiny --patch-sizes 2,4 --height 64 --width 64 --backends onnx`)
still loads, and samples the latent that code sampled (tests/data/engines_v0_flux_tiny_reference.npz)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ddit_export.artifacts.manifest import read_manifest
from ddit_export.pipelines import generate, make_conditioning
from ddit_export.runtime.backends import get_backend
from ddit_export.runtime.runner import schedule_config

DATA = Path(__file__).parent.parent / "data"
LEGACY = DATA / "engines_v0_flux_tiny"


@pytest.fixture
def legacy(tmp_path) -> Path:
    folder = tmp_path / "engines"
    shutil.copytree(LEGACY, folder)  # a copy: nothing a test does may touch the fixture
    return folder


def test_the_legacy_manifest_reads(legacy):
    manifest = read_manifest(legacy)
    assert manifest.family == "flux" and manifest.patch_sizes == (2, 4)
    assert manifest["format"] == 1  # the file format is unchanged, and dict access still works


@pytest.mark.parametrize("backend_name", ["onnx", "torch"])
def test_a_legacy_folder_samples_what_it_sampled_before(legacy, backend_name):
    reference = np.load(DATA / "engines_v0_flux_tiny_reference.npz")
    with get_backend(backend_name, legacy) as backend:
        cond = make_conditioning(backend.manifest, "a red cube", None, "cpu")
        result = generate(backend, cond, schedule_config(backend, schedule=[2, 4, 4, 2]), steps=4, seed=3)
    assert result.trace.schedule == reference[f"{backend_name}_schedule"].tolist()
    torch.testing.assert_close(result.latent.float(), torch.from_numpy(reference[f"{backend_name}_latent"]),
                               atol=1e-5, rtol=1e-4)
