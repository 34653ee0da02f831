"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture
def torch_single_thread():
    """One intra-op thread: on a small shared machine, multi-threaded tiny ops wait on busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_flux_engines(tmp_path_factory) -> Path:
    """Tiny FLUX engines (sizes 2/4/8, 128x128 -> 16x16 latent, text_len 8, fp32, ONNX), built once.

    Read-only for tests: copy the folder before altering anything in it.
    """
    from ddit_export.export.build import export_engines
    from ddit_export.export.request import ExportRequest

    out = tmp_path_factory.mktemp("tiny_flux") / "engines"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_engines(ExportRequest(
            model="tiny", patch_sizes=(2, 4, 8), height=128, width=128, text_len=8, dtype="fp32", out=str(out),
        ))
    finally:
        torch.set_num_threads(before)
    return out


@pytest.fixture(scope="session")
def tiny_flux_backends(tiny_flux_engines) -> dict:
    """{"torch": TorchEagerBackend, "onnx": OnnxRuntimeBackend} on `tiny_flux_engines`, loaded once (do not close)."""
    from ddit_export.runtime.backends import get_backend

    backends = {name: get_backend(name, tiny_flux_engines) for name in ("torch", "onnx")}
    yield backends
    for backend in backends.values():
        backend.close()


@pytest.fixture
def tiny_flux_vae():
    """A 16-latent-channel, 8x-downsampling AutoencoderKL small enough to decode in milliseconds."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    )
