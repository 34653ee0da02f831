"""Engine backends: one interface, agreement with the reference, refusal of altered artifacts."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ddit_export.artifacts.iospec import IOSpec
from ddit_export.artifacts.manifest import ManifestError
from ddit_export.pipelines.registry import make_conditioning
from ddit_export.runtime.backends import BackendError, available_backends, get_backend
from ddit_export.runtime.backends.onnxruntime import OnnxRuntimeBackend, cuda_provider_available
from ddit_export.runtime.backends.torch_eager import TorchEagerBackend

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def engine_inputs(backend, seed: int = 0, device="cpu") -> tuple[torch.Tensor, dict]:
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(backend.latent_shape, generator=gen)
    cond = make_conditioning(backend.manifest, "a lighthouse")
    cond = cond.engine_inputs(backend.io_spec, device, torch.float32)
    return latent.to(device), {**cond, "timestep": torch.full((backend.latent_shape[0],), 0.6, device=device)}


def test_registry_lists_backends_and_refuses_unknown_names(tiny_flux_engines):
    assert available_backends() == ["aoti", "onnx", "onnx-trt", "torch", "torch-compile", "trt"]
    with pytest.raises(BackendError, match=r"unknown backend 'tvm'; available: aoti, onnx, onnx-trt, torch"):
        get_backend("tvm", tiny_flux_engines)
    with pytest.raises(BackendError, match="has no AOTInductor packages: export with `--backends onnx,aoti`"):
        get_backend("aoti", tiny_flux_engines)


def test_backends_expose_the_manifest_interface(tiny_flux_backends, tiny_flux_engines):
    manifest = json.loads((tiny_flux_engines / "manifest.json").read_text())
    for name, cls in (("torch", TorchEagerBackend), ("onnx", OnnxRuntimeBackend)):
        backend = tiny_flux_backends[name]
        assert isinstance(backend, cls) and backend.name == name
        assert backend.patch_sizes == (2, 4, 8)
        assert backend.io_spec == IOSpec.from_json(manifest["io"])
        assert backend.latent_shape == (1, 16, 16, 16)


@pytest.mark.parametrize("patch", [2, 4, 8])
def test_onnx_matches_torch_reference_at_every_size(tiny_flux_backends, patch):
    latent, cond = engine_inputs(tiny_flux_backends["torch"], seed=patch)
    ref = tiny_flux_backends["torch"](patch, latent, **cond)
    out = tiny_flux_backends["onnx"](patch, latent, **cond)
    assert out.shape == latent.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-3)


def test_sizes_give_different_predictions(tiny_flux_backends):
    # The dispatch must really reach another engine, not the same one three times.
    latent, cond = engine_inputs(tiny_flux_backends["onnx"])
    outs = [tiny_flux_backends["onnx"](p, latent, **cond) for p in (2, 4, 8)]
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])


def test_io_binding_path_matches_plain_run(tiny_flux_engines, tiny_flux_backends):
    # The CUDA path's binding code, run on the CPU: same inputs, output in the preallocated buffer.
    latent, cond = engine_inputs(tiny_flux_backends["onnx"])
    with get_backend("onnx", tiny_flux_engines, io_binding=True) as bound:
        first = bound(4, latent, **cond)
        assert first.data_ptr() == bound(8, latent, **cond).data_ptr()  # one shared output buffer
        out = bound(4, latent, **cond).clone()
    assert torch.equal(out, tiny_flux_backends["onnx"](4, latent, **cond))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch here is a CPU build")
@pytest.mark.skipif(not cuda_provider_available(), reason="onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu)")
def test_onnx_cuda_io_binding_matches_cpu(tiny_flux_engines, tiny_flux_backends):
    latent, cond = engine_inputs(tiny_flux_backends["onnx"])
    with get_backend("onnx", tiny_flux_engines, device="cuda") as gpu:
        assert gpu.on_cuda and gpu.io_binding
        out = gpu(4, latent.cuda(), **{k: v.cuda() for k, v in cond.items()})
        assert out.is_cuda
        torch.testing.assert_close(out.cpu(), tiny_flux_backends["onnx"](4, latent, **cond), atol=1e-3, rtol=1e-3)


def test_wrong_inputs_are_refused_with_names(tiny_flux_backends):
    backend = tiny_flux_backends["onnx"]
    latent, cond = engine_inputs(backend)
    with pytest.raises(BackendError, match="no onnx engine for patch size 16"):
        backend(16, latent, **cond)
    with pytest.raises(BackendError, match=r"missing \['guidance'\]"):
        backend(2, latent, **{k: v for k, v in cond.items() if k != "guidance"})
    with pytest.raises(BackendError, match=r"'latent' has shape \(1, 16, 8, 8\); the engines were built for"):
        backend(2, latent[..., :8, :8], **cond)


def test_inputs_are_cast_to_the_spec_dtype(tiny_flux_backends):
    backend = tiny_flux_backends["onnx"]
    latent, cond = engine_inputs(backend)
    ref = backend(2, latent, **cond)
    out = backend(2, latent.double(), **{k: v.double() for k, v in cond.items()})
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


def test_altered_artifact_is_refused(tiny_flux_engines, tmp_path):
    folder = tmp_path / "engines"
    shutil.copytree(tiny_flux_engines, folder)
    with open(folder / "onnx" / "p4.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ManifestError, match=r"p4\.onnx does not match its manifest \(sha256 .*altered or replaced"):
        get_backend("onnx", folder)


def test_torch_backend_refuses_other_weights(tiny_flux_engines, tmp_path):
    folder = tmp_path / "engines"
    shutil.copytree(tiny_flux_engines, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model"]["weights_sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="now has other weights than the engines were built from"):
        get_backend("torch", folder)


def test_close_releases_engines(tiny_flux_engines):
    backend = get_backend("onnx", tiny_flux_engines)
    with backend:
        assert backend.patch_sizes == (2, 4, 8)
    assert backend.patch_sizes == ()
