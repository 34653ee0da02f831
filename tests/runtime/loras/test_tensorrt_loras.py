"""TensorRT: a user LoRA refits the trunk plan with full weights; needs TensorRT and a CUDA GPU (skipped here)."""

from __future__ import annotations

import pytest
import torch

from ddit_export.artifacts.tensorrt_plans import unavailable_reason
from tests.runtime.loras.helpers import kohya_lora, peft_lora

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=f"TensorRT: {unavailable_reason()}")


def test_refit_matches_onnx_runtime_and_a_b_a_is_exact(tmp_path):
    from ddit_export.cli import main
    from ddit_export.runtime.backends import get_backend
    from tests.runtime.loras.test_loras import _inputs

    out = tmp_path / "staged"
    assert main(["flux", "--model", "tiny", "--patch-sizes", "2,4,8", "--height", "128", "--width", "128",
                 "--text-len", "8", "--dtype", "fp32", "--layout", "staged", "--backends", "onnx,trt",
                 "--out", str(out)]) == 0
    a = [(peft_lora(tmp_path / "a.safetensors", seed=1), 0.7)]
    b = [(kohya_lora(tmp_path / "k.safetensors", seed=3), 1.0)]
    inputs = _inputs(seed=1)

    def run(backend, patch):
        given = {k: v.to(backend.device) for k, v in inputs.items()}
        return backend(patch, given.pop("latent"), **given).float().cpu().clone()

    with get_backend("onnx", out, loras=a) as ort:
        want = {p: run(ort, p) for p in ort.patch_sizes}
    with get_backend("trt", out, device="cuda") as trt:
        original = {p: run(trt, p) for p in trt.patch_sizes}
        trt.set_loras(a)
        with_a = {p: run(trt, p) for p in trt.patch_sizes}
        trt.set_loras(b)
        trt.set_loras(a)
        again = {p: run(trt, p) for p in trt.patch_sizes}
        trt.set_loras([])
        removed = {p: run(trt, p) for p in trt.patch_sizes}
    for p in want:
        torch.testing.assert_close(with_a[p], want[p], atol=1e-3, rtol=1e-2)  # TF32 on the GPU
        assert torch.equal(again[p], with_a[p]), f"p{p}: A -> B -> A must refit A exactly (TensorRT#3628)"
        assert torch.equal(removed[p], original[p]), f"p{p}: removing must refit the originals exactly"
