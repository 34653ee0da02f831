"""`ddit-export flux` / `inspect`: engines, manifest, reuse, and one clear line for bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from ddit_export.artifacts.iospec import IOSpec, random_feed
from ddit_export.artifacts.manifest import read_manifest, sha256_file
from ddit_export.cli import main

TINY = ["flux", "--model", "tiny", "--text-len", "8", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    out = tmp_path_factory.mktemp("flux") / "engines"
    assert main(TINY + ["--patch-sizes", "2,4,8", "--height", "256", "--width", "256", "--out", str(out)]) == 0
    return out


def test_three_validated_graphs_with_identical_io(engines):
    m = read_manifest(engines)
    assert [e["patch_size"] for e in m["engines"]] == [2, 4, 8]
    assert [e["tokens"] for e in m["engines"]] == [256, 64, 16]
    specs = [IOSpec.from_onnx(engines / e["files"][0]).to_json() for e in m["engines"]]
    assert specs[0] == specs[1] == specs[2] == m["io"]
    assert [t["name"] for t in m["io"]["inputs"]] == [
        "latent", "encoder_hidden_states", "timestep", "pooled_projections", "guidance"]
    assert m["io"]["outputs"] == [{"name": "prediction", "shape": [1, 16, 32, 32], "dtype": "float32"}]
    for e in m["engines"]:
        assert e["validation"]["passed"] and e["validation"]["max_abs_err"] < 1e-4
        assert e["sha256"] == [sha256_file(engines / f) for f in e["files"]]
    assert m["adapters"]["trained"] is False
    assert not [p for p in engines.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_every_engine_runs_in_plain_onnxruntime_from_the_manifest_alone(engines):
    m = json.loads((engines / "manifest.json").read_text())
    spec = IOSpec.from_json(m["io"])
    feed = random_feed(spec, seed=0)
    outputs = []
    for e in m["engines"]:
        session = ort.InferenceSession(str(engines / e["files"][0]), providers=["CPUExecutionProvider"])
        (out,) = session.run(spec.output_names, feed)
        assert out.shape == tuple(spec.outputs[0].shape) and np.isfinite(out).all()
        outputs.append(out)
    assert not np.allclose(outputs[0], outputs[1]), "sizes must differ: they are different engines"


def test_second_run_reuses_unchanged_engines_and_adds_a_new_size(engines):
    before = {e["patch_size"]: e["sha256"] for e in read_manifest(engines)["engines"]}
    assert main(TINY + ["--patch-sizes", "2,4", "--height", "256", "--width", "256", "--out", str(engines)]) == 0
    m = read_manifest(engines)
    assert all(e.get("reused") for e in m["engines"])
    assert {e["patch_size"]: e["sha256"] for e in m["engines"]} == {2: before[2], 4: before[4]}


def test_other_inputs_need_force(engines, capsys):
    code = main(TINY + ["--height", "128", "--width", "128", "--out", str(engines)])
    assert code == 2
    assert "built from other inputs (height, width differ)" in capsys.readouterr().err
    assert read_manifest(engines)["request"]["height"] == 256  # untouched


def test_inspect_prints_the_manifest(engines, capsys):
    assert main(["inspect", str(engines)]) == 0
    text = capsys.readouterr().out
    assert "UNTRAINED" in text and "prediction" in text and "onnx/p4.onnx" in text


def test_forced_external_data_and_bf16_via_the_fp32_twin(tmp_path):
    out = tmp_path / "bf16"
    args = ["flux", "--model", "tiny", "--text-len", "8", "--dtype", "bf16", "--patch-sizes", "2,4",
            "--height", "128", "--width", "128", "--external-data", "--out", str(out)]
    assert main(args) == 0
    m = read_manifest(out)
    for e in m["engines"]:
        assert e["files"] == [f"onnx/p{e['patch_size']}.onnx", f"onnx/p{e['patch_size']}.onnx.data"]
        assert e["validation"]["validated_as"] == "fp32-twin" and e["validation"]["passed"]
    assert {t["dtype"] for t in m["io"]["inputs"]} == {"bfloat16"}
    assert not (out / "onnx" / ".twin").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--patch-sizes", "2,5"], "patch size 5 is not a multiple of the base size 2"),
        (["--patch-sizes", "4,8"], "base patch size 2 must be among --patch-sizes"),
        (["--height", "100"], "multiples of 16"),
        (["--model", "/definitely/not/here"], "does not exist"),
        (["--model", "nobody/no-such-model"], "not in the local Hugging Face cache"),
        (["--adapters", "."], "is not an adapter pack"),
        (["--opset", "18"], "--opset must be at least 20"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    base = ["flux", "--model", "tiny", "--height", "128", "--width", "128", "--out", str(out)]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("ddit-export: error:") and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_adapter_pack_lacking_a_size_is_refused(tmp_path, capsys):
    from ddit_export.ddit.adapter_pack import save_adapter_pack
    from ddit_export.ddit.model import DDiTModel
    from ddit_export.families.flux import FLUX

    save_adapter_pack(DDiTModel(FLUX, FLUX.tiny(), [2, 4]), tmp_path / "pack", base_model="tiny")
    out = tmp_path / "out"
    code = main(TINY + ["--patch-sizes", "2,4,8", "--height", "128", "--width", "128",
                        "--adapters", str(tmp_path / "pack"), "--out", str(out)])
    assert code == 2 and "no adapter for patch size(s) [8]" in capsys.readouterr().err
    assert not out.exists()


def test_unwritable_out_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK) and os.geteuid() == 0:
            target = "/proc/ddit-out"  # root ignores permission bits; /proc refuses new folders
        else:
            target = str(locked / "out")
        assert main(TINY + ["--height", "128", "--width", "128", "--out", target]) == 2
        assert "is not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "ddit_export.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("ddit-export ")


def test_a_calibrated_schedule_survives_a_re_export_unless_tau_is_given(engines):
    from ddit_export.artifacts.manifest import write_manifest

    m = read_manifest(engines)
    m["scheduler"].update(tau=0.05, rho=0.3, calibration={"budget": "psnr >= 30"})
    write_manifest(engines, m)
    args = TINY + ["--patch-sizes", "2,4", "--height", "256", "--width", "256", "--out", str(engines)]
    assert main(args) == 0
    kept = read_manifest(engines)["scheduler"]
    assert (kept["tau"], kept["calibration"]) == (0.05, {"budget": "psnr >= 30"})
    assert main(args + ["--tau", "0.002"]) == 0
    fresh = read_manifest(engines)["scheduler"]
    assert (fresh["tau"], fresh["rho"], fresh["calibration"]) == (0.002, 0.4, None)


@pytest.mark.parametrize("layout", ["pipeline", "transformer"])
def test_export_from_a_saved_diffusers_folder(tmp_path, layout):
    """Real from_pretrained loading, on a tiny model the test saves itself (no hub)."""
    from ddit_export.families.flux import FLUX

    folder = tmp_path / "model"
    FLUX.tiny().save_pretrained(folder / "transformer" if layout == "pipeline" else folder)
    out = tmp_path / "out"
    assert main(["flux", "--model", str(folder), "--patch-sizes", "2,4", "--height", "128", "--width", "128",
                 "--text-len", "8", "--dtype", "fp32", "--out", str(out)]) == 0
    m = read_manifest(out)
    assert m["model"]["id"] == str(folder) and m["model"]["weights_sha256"] == read_manifest_hash_of_tiny()


def read_manifest_hash_of_tiny():
    from ddit_export.artifacts.manifest import sha256_tensors
    from ddit_export.families.flux import FLUX

    return sha256_tensors(FLUX.tiny().state_dict())
