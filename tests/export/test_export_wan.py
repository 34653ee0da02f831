"""`ddit-export wan`: validated engines with one I/O signature, padding reported, plain ONNX Runtime, frames rule."""

import json

import numpy as np
import onnxruntime as ort
import pytest

from ddit_export.artifacts.iospec import IOSpec, random_feed
from ddit_export.cli import main


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    out = tmp_path_factory.mktemp("wan") / "engines"
    code = main(["wan", "--model", "tiny", "--patch-sizes", "2,4,8", "--frames", "5", "--height", "96",
                 "--width", "160", "--text-len", "8", "--dtype", "fp32", "--out", str(out)])
    assert code == 0
    return out


def test_cli_writes_three_validated_engines_with_identical_io_and_reports_padding(engines):
    m = json.loads((engines / "manifest.json").read_text())
    assert m["family"] == "wan" and m["latent_shape"] == [1, 16, 2, 12, 20]
    assert [t["name"] for t in m["io"]["inputs"]] == ["latent", "encoder_hidden_states", "timestep"]
    by_size = {e["patch_size"]: e for e in m["engines"]}
    assert by_size[8]["padded_grid"] == [16, 24] and by_size[8]["tokens"] == 2 * 2 * 3
    assert by_size[8]["padding_tokens"] == pytest.approx(12 - 2 * 12 * 20 / 64)
    assert by_size[4]["padding_tokens"] == 0
    for e in m["engines"]:
        assert e["validation"]["passed"]
        assert IOSpec.from_onnx(engines / e["files"][0]).to_json() == m["io"]


def test_engines_run_in_plain_onnxruntime_from_the_manifest(engines):
    m = json.loads((engines / "manifest.json").read_text())
    spec = IOSpec.from_json(m["io"])
    feed = random_feed(spec, seed=1)
    for e in m["engines"]:
        session = ort.InferenceSession(str(engines / e["files"][0]), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, feed)
        assert out.shape == (1, 16, 2, 12, 20) and np.isfinite(out).all()


def test_bad_frames_is_one_line_exit_2(tmp_path, capsys):
    assert main(["wan", "--model", "tiny", "--frames", "6", "--height", "96", "--width", "160",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--frames must be 4k+1" in capsys.readouterr().err and not (tmp_path / "x").exists()
