"""TensorRT for the staged layout: one trunk plan with one optimisation profile per token count (of every
resolution bucket and size).

The profile arithmetic runs everywhere (Polygraphy's `Profile` needs no TensorRT); building and
running plans needs TensorRT and a CUDA GPU and is skipped here with the reason.
"""

from __future__ import annotations

import pytest
import torch

from ddit_export.artifacts.tensorrt_plans import unavailable_reason
from ddit_export.export.staged.tensorrt import profile_tokens, trunk_profiles

TRUNK_IO = {"inputs": [
    {"name": "tokens", "shape": [1, "tokens", 32], "dtype": "float32"},
    {"name": "text_tokens", "shape": [1, 8, 32], "dtype": "float32"},
    {"name": "rope_cos", "shape": ["tokens + 8", 16], "dtype": "float32"},
    {"name": "size_index", "shape": [1], "dtype": "int64"},
]}


def test_one_static_profile_per_size_with_the_text_tokens_beside_the_image_tokens():
    profiles = trunk_profiles(TRUNK_IO, [64, 16, 4], text_len=8)
    assert len(profiles) == 3
    for profile, tokens in zip(profiles, (64, 16, 4)):
        for name, want in {"tokens": (1, tokens, 32), "rope_cos": (tokens + 8, 16), "size_index": (1,)}.items():
            shapes = profile[name]
            assert tuple(shapes.min) == tuple(shapes.opt) == tuple(shapes.max) == want, name


def test_an_unknown_symbolic_axis_is_refused():
    io = {"inputs": [{"name": "x", "shape": ["frames", 4], "dtype": "float32"}]}
    with pytest.raises(ValueError, match="unexpected symbolic axis 'frames'"):
        trunk_profiles(io, [4], text_len=8)


def test_buckets_add_a_profile_per_new_token_count_only():
    # 1024x1024, 768x1344 and 1344x768 at sizes 2, 4: the two transposed buckets share their counts
    counts = profile_tokens([4096, 1024, 4032, 1008, 4032, 1008])
    assert counts == [4096, 1024, 4032, 1008]
    assert [tuple(p["tokens"].opt) for p in trunk_profiles(TRUNK_IO, counts, text_len=8)] == \
        [(1, 4096, 32), (1, 1024, 32), (1, 4032, 32), (1, 1008, 32)]


@pytest.mark.skipif(unavailable_reason() is not None, reason=f"TensorRT: {unavailable_reason()}")
def test_staged_trt_plans_match_the_onnx_chain(tmp_path):
    from ddit_export.cli import main
    from ddit_export.runtime.backends import get_backend

    out = tmp_path / "staged"
    assert main(["flux", "--model", "tiny", "--patch-sizes", "2,4,8", "--height", "128", "--width", "128",
                 "--text-len", "8", "--dtype", "fp32", "--layout", "staged", "--backends", "onnx,trt",
                 "--out", str(out)]) == 0
    with get_backend("onnx", out) as ref, get_backend("trt", out, device="cuda") as trt:
        assert trt.patch_sizes == ref.patch_sizes == (2, 4, 8)
        gen = torch.Generator().manual_seed(0)
        cond = {t.name: torch.randn(t.shape, generator=gen) for t in ref.io_spec.inputs}
        latent = cond.pop("latent")
        for patch in (2, 4, 8):
            want = ref(patch, latent, **cond)
            got = trt(patch, latent.cuda(), **{k: v.cuda() for k, v in cond.items()}).cpu()
            assert torch.nn.functional.cosine_similarity(want.flatten(), got.flatten(), dim=0) > 0.999


@pytest.mark.skipif(unavailable_reason() is not None, reason=f"TensorRT: {unavailable_reason()}")
def test_staged_trt_buckets_share_one_trunk_plan(tmp_path):
    from ddit_export.artifacts.manifest import read_manifest
    from ddit_export.cli import main
    from ddit_export.runtime.backends import get_backend

    out = tmp_path / "buckets"
    assert main(["flux", "--model", "tiny", "--patch-sizes", "2,4", "--resolutions", "64x64,48x96,96x48",
                 "--text-len", "8", "--dtype", "fp32", "--layout", "staged", "--backends", "onnx,trt",
                 "--out", str(out)]) == 0
    manifest = read_manifest(out)
    plans = {e["files"][1] for e in manifest.all_engines if e["backend"] == "trt"}
    profiles = {(e["tokens"], e["trunk_profile"]) for e in manifest.all_engines if e["backend"] == "trt"}
    assert len(plans) == 1 and len(profiles) == 4  # 48x96 and 96x48 share their token counts' profiles
    for bucket in ((64, 64), (48, 96), (96, 48)):
        with get_backend("onnx", out, bucket=bucket) as ref, get_backend("trt", out, "cuda", bucket=bucket) as trt:
            gen = torch.Generator().manual_seed(0)
            cond = {t.name: torch.randn(t.shape, generator=gen) for t in ref.io_spec.inputs}
            latent = cond.pop("latent")
            for patch in (2, 4):
                want = ref(patch, latent, **cond)
                got = trt(patch, latent.cuda(), **{k: v.cuda() for k, v in cond.items()}).cpu()
                assert torch.nn.functional.cosine_similarity(want.flatten(), got.flatten(), dim=0) > 0.999
