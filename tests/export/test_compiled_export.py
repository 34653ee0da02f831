"""Compiled engines: AOTInductor packages on CPU, and the TensorRT logic that needs no GPU."""

import json

import pytest
import torch

from ddit_export.artifacts.manifest import engine_entries, read_manifest
from ddit_export.artifacts.tensorrt_plans import (
    PlanMismatchError,
    aligned,
    check_plan_compatible,
    plan_relpath,
    shared_activation_bytes,
    unavailable_reason,
)
from ddit_export.cli import main
from ddit_export.export.request import ExportRequest
from ddit_export.runtime.backends.aoti import load_aoti


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    out = tmp_path_factory.mktemp("aoti") / "engines"
    code = main(["flux", "--model", "tiny", "--patch-sizes", "2,4", "--height", "128", "--width", "128",
                 "--text-len", "8", "--dtype", "fp32", "--backends", "onnx,aoti", "--out", str(out)])
    assert code == 0
    return out


def test_both_backends_for_both_sizes_are_validated_and_recorded(engines):
    m = read_manifest(engines)
    pairs = [(e["patch_size"], e["backend"]) for e in m["engines"]]
    assert pairs == [(2, "onnx"), (2, "aoti"), (4, "onnx"), (4, "aoti")]
    for patch, entry in engine_entries(m, "aoti").items():
        assert entry["files"] == [f"aoti/p{patch}.pt2"] and entry["device"] == "cpu"
        assert entry["validation"]["passed"] and entry["validation"]["max_abs_err"] < 1e-4


def test_aoti_package_runs_from_the_manifest_and_sizes_differ(engines):
    m = json.loads((engines / "manifest.json").read_text())
    feed = {t["name"]: torch.randn(t["shape"]) for t in m["io"]["inputs"]}
    outs = {p: load_aoti(engines / e["files"][0])(**feed) for p, e in engine_entries(m, "aoti").items()}
    assert all(o.shape == (1, 16, 16, 16) and torch.isfinite(o).all() for o in outs.values())
    assert not torch.allclose(outs[2], outs[4])


def test_backends_must_include_onnx_and_be_known():
    with pytest.raises(ValueError, match="must include onnx"):
        ExportRequest(model="tiny", height=128, width=128, artifacts=("aoti",))
    with pytest.raises(ValueError, match="unknown artifact kind"):
        ExportRequest(model="tiny", height=128, width=128, artifacts=("onnx", "tvm"))


@pytest.mark.skipif(unavailable_reason() is None, reason="TensorRT and CUDA are present: refusal does not apply")
def test_trt_is_refused_with_the_reason_where_absent(capsys, tmp_path):
    assert main(["flux", "--model", "tiny", "--backends", "onnx,trt", "--out", str(tmp_path / "x")]) == 2
    assert unavailable_reason() in capsys.readouterr().err
    assert ExportRequest(model="tiny", height=128, width=128).artifacts == ("onnx",)


def test_plan_names_carry_size_and_tensorrt_version():
    assert plan_relpath(4, "10.13.2.6") == "trt/p4_trt10.13.2.6.plan"


def test_a_plan_from_another_gpu_or_version_is_refused_with_a_rebuild_hint():
    entry = {"files": ["trt/p2_trt10.13.plan"], "tensorrt": "10.13", "gpu": "NVIDIA H100", "compute_capability": "9.0"}
    check_plan_compatible(entry, {"tensorrt": "10.13", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})
    with pytest.raises(PlanMismatchError, match="--backends onnx,trt --force"):
        check_plan_compatible(entry, {"tensorrt": "10.13", "gpu": "NVIDIA A100", "compute_capability": "8.0"})
    with pytest.raises(PlanMismatchError, match="TensorRT 10.13 for NVIDIA H100"):
        check_plan_compatible(entry, {"tensorrt": "11.0", "gpu": "NVIDIA H100", "compute_capability": "9.0"})


def test_one_shared_activation_buffer_is_sized_for_the_largest_engine():
    assert aligned(1) == 256 and aligned(256) == 256 and aligned(257) == 512
    assert shared_activation_bytes([1000, 70_000, 3]) == aligned(70_000)
    with pytest.raises(ValueError):
        shared_activation_bytes([])


@pytest.mark.skipif(unavailable_reason() is not None, reason=f"TensorRT build needs it: {unavailable_reason()}")
def test_trt_plans_build_and_validate_on_gpu(tmp_path):  # pragma: no cover - runs on GPU machines only
    out = tmp_path / "trt"
    assert main(["flux", "--model", "tiny", "--patch-sizes", "2,4", "--height", "128", "--width", "128",
                 "--text-len", "8", "--dtype", "bf16", "--backends", "onnx,trt", "--out", str(out)]) == 0
    for entry in engine_entries(read_manifest(out), "trt").values():
        assert entry["validation"]["passed"] and entry["validation"]["cosine"] >= 0.997


def test_aoti_and_torch_compile_backends_agree_with_eager(engines):
    from ddit_export.runtime.backends import get_backend

    m = read_manifest(engines)
    gen = torch.Generator().manual_seed(0)
    feed = {t["name"]: torch.randn(t["shape"], generator=gen) for t in m["io"]["inputs"]}
    latent = feed.pop("latent")
    with get_backend("torch", engines) as eager, get_backend("aoti", engines) as aoti, \
            get_backend("torch-compile", engines) as compiled:
        for patch in (2, 4):
            reference = eager(patch, latent, **feed).clone()
            assert torch.allclose(aoti(patch, latent, **feed), reference, atol=1e-4)
            assert torch.allclose(compiled(patch, latent, **feed), reference, atol=1e-4)


def test_generate_runs_on_the_aoti_backend(engines, tmp_path):
    out = tmp_path / "gen"
    assert main(["generate", str(engines), "--backend", "aoti", "--steps", "6", "--out", str(out)]) == 0
    trace = json.loads((out / "trace.json").read_text())
    assert len(trace["steps"]) == 6 and trace["steps"][0]["stats"] is None
