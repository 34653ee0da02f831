"""The step cache on the compiled backends of a staged folder: torch.compile (CPU, cheap), AOTInductor
(compiles every part at export: the smallest folder) and TensorRT (needs TensorRT and a CUDA GPU; skipped here with
the reason). Each checks what tests/test_cache.py checks on eager torch and ONNX Runtime: threshold 0 is the
uncached run, a cached step skips the trunk, and a size switch never reuses another size's residual.
"""

from __future__ import annotations

import pytest
import torch

from ddit_export.artifacts.tensorrt_plans import unavailable_reason
from ddit_export.pipelines import generate, make_conditioning
from ddit_export.runtime.backends import get_backend
from ddit_export.runtime.cache import StepCache, parse_cache
from ddit_export.runtime.cache.coefficients import FLUX_DEV
from ddit_export.runtime.runner import schedule_config

HUGE = 1e9  # a threshold that skips every step it may
ALTERNATING = (2, 2, 4, 4, 2, 2)


def _run(backend, cache=None, schedule=(2,) * 6, device="cpu"):
    cond = make_conditioning(backend.manifest, "a fox", device=device)
    return generate(backend, cond, schedule_config(backend, schedule=schedule), steps=len(schedule), seed=1,
                    cache=cache)


def _check_cached_path(backend, device="cpu", fbcache=True):
    """The three properties, on one backend."""
    ref = _run(backend, device=device)
    exact = _run(backend, StepCache(backend, parse_cache("teacache:0"), coefficients=FLUX_DEV), device=device)
    assert not any(exact.trace.cached) and torch.equal(exact.latent, ref.latent)
    cached = _run(backend, StepCache(backend, parse_cache(f"teacache:{HUGE}"), coefficients=FLUX_DEV), device=device)
    assert cached.trace.cached == [False, True, True, True, True, False]  # first and last steps always run
    assert not torch.equal(cached.latent, ref.latent)
    switching = _run(backend, StepCache(backend, parse_cache(f"teacache:{HUGE}"), coefficients=FLUX_DEV),
                     schedule=ALTERNATING, device=device)
    assert switching.trace.cached == [False, True, False, True, False, False]  # each size's first step runs
    if fbcache:
        fb = _run(backend, StepCache(backend, parse_cache(f"fbcache:{HUGE}")), device=device)
        assert fb.trace.cached == [False, True, True, True, True, True]  # diffusers' FBC forces only the first
    return cached


@pytest.fixture(scope="module")
def flux_staged(tmp_path_factory):
    from tests.runtime.test_cache import _export

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _export(tmp_path_factory.mktemp("cache-backends"), "flux", "staged", height=128, width=128, text_len=8)
    finally:
        torch.set_num_threads(before)


def test_torch_compile_cached_path(flux_staged, torch_single_thread):
    with get_backend("torch-compile", flux_staged) as backend, get_backend("torch", flux_staged) as eager:
        cached = _check_cached_path(backend)
        want = _run(eager, StepCache(eager, parse_cache(f"teacache:{HUGE}"), coefficients=FLUX_DEV))
    assert want.trace.cached == cached.trace.cached
    assert torch.allclose(cached.latent, want.latent, rtol=1e-4, atol=1e-4)  # compiled kernels vs eager


@pytest.mark.skipif(not hasattr(torch, "_inductor"), reason="AOTInductor is not in this torch build")
def test_aoti_cached_path(tmp_path, torch_single_thread):
    """AOTInductor: every part of both sizes compiled at export (about a minute or more on a 2-core CPU; the
    smallest folder that switches sizes)."""
    from ddit_export.cli import main

    out = tmp_path / "staged"
    assert main(["flux", "--model", "tiny", "--patch-sizes", "2,4", "--height", "64", "--width", "64",
                 "--text-len", "8", "--dtype", "fp32", "--layout", "staged", "--backends", "onnx,aoti",
                 "--out", str(out)]) == 0
    with get_backend("aoti", out) as backend, get_backend("onnx", out) as onnx:
        got = _check_cached_path(backend, fbcache=False)
        want = _run(onnx, StepCache(onnx, parse_cache(f"teacache:{HUGE}"), coefficients=FLUX_DEV))
    assert got.trace.cached == want.trace.cached
    assert torch.allclose(got.latent, want.latent, rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(unavailable_reason() is not None, reason=f"TensorRT: {unavailable_reason()}")
def test_tensorrt_cached_path_matches_onnx_runtime(tmp_path):
    """TensorRT plans of a staged folder: the cached path writes the head's input into the trunk-output buffer
    its head plan reads; the same decisions as ONNX Runtime's cached run, and the same latents to fp32
    plan accuracy (cosine > 0.999)."""
    from ddit_export.cli import main

    out = tmp_path / "staged"
    assert main(["flux", "--model", "tiny", "--patch-sizes", "2,4", "--height", "128", "--width", "128",
                 "--text-len", "8", "--dtype", "fp32", "--layout", "staged", "--backends", "onnx,trt",
                 "--out", str(out)]) == 0
    with get_backend("trt", out, device="cuda") as trt, get_backend("onnx", out) as onnx:
        got = _check_cached_path(trt, device="cuda", fbcache=False)
        want = _run(onnx, StepCache(onnx, parse_cache(f"teacache:{HUGE}"), coefficients=FLUX_DEV))
        with pytest.raises(Exception, match="trunk split after block 0"):  # one trunk graph: no first-block cache
            StepCache(trt, parse_cache("fbcache:0.05"))
    assert got.trace.cached == want.trace.cached
    cosine = torch.nn.functional.cosine_similarity(got.latent.cpu().flatten().float(), want.latent.flatten().float(),
                                                   dim=0)
    assert cosine > 0.999


# -- first-block caching on ONNX Runtime: `export --first-block-split` -----------------------------------

def test_onnx_first_block_split_export_runs_fbcache(tmp_path, torch_single_thread):
    import json

    from ddit_export.cli import main
    from ddit_export.export.request import ExportRequest

    with pytest.raises(ValueError, match="add --layout staged"):
        ExportRequest(family="flux", model="tiny", patch_sizes=(2, 4), first_block_split=True)
    out = tmp_path / "split"
    assert main(["flux", "--model", "tiny", "--patch-sizes", "2,4", "--height", "64", "--width", "64",
                 "--text-len", "8", "--dtype", "fp32", "--layout", "staged", "--backends", "onnx",
                 "--first-block-split", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["staged"]["first_block_split"] is True
    for entry in manifest["engines"]:
        assert entry["files"][3:5] == ["staged/first_block.onnx", "staged/other_blocks.onnx"]
        assert {"first_block", "other_blocks"} <= set(entry["validation"]["parts"])
    with get_backend("onnx", out) as onnx, get_backend("torch", out) as eager:
        assert onnx.first_block_split
        ref = _run(onnx, schedule=ALTERNATING)
        exact = _run(onnx, StepCache(onnx, parse_cache("fbcache:0")), schedule=ALTERNATING)
        assert not any(exact.trace.cached) and torch.equal(exact.latent, ref.latent)
        got = _run(onnx, StepCache(onnx, parse_cache(f"fbcache:{HUGE}")), schedule=ALTERNATING)
        want = _run(eager, StepCache(eager, parse_cache(f"fbcache:{HUGE}")), schedule=ALTERNATING)
    assert got.trace.cached == want.trace.cached == [False, True, False, True, False, True]
    assert torch.allclose(got.latent, want.latent, rtol=1e-3, atol=1e-4)
