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


TINY_BUCKETS = ((64, 64), (48, 96))  # the default first; 48x96 pads at p4 (6x12 latent)


@pytest.fixture(scope="session")
def tiny_flux_bucket_engines(tmp_path_factory) -> Path:
    """Tiny FLUX staged engines at two resolution buckets (64x64 default, 48x96), sizes 2/4, text_len 8, fp32,
    ONNX: one trunk for both buckets. Read-only for tests."""
    from ddit_export.export.build import export_engines
    from ddit_export.export.request import ExportRequest

    out = tmp_path_factory.mktemp("tiny_flux_buckets") / "engines"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_engines(ExportRequest(model="tiny", patch_sizes=(2, 4), resolutions=TINY_BUCKETS, text_len=8,
                                     dtype="fp32", layout="staged", artifacts=("onnx",), out=str(out)))
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
    return make_tiny_flux_vae()


def make_tiny_flux_vae():
    """The `tiny_flux_vae` fixture's VAE (seed 0), for session fixtures too."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    )


WAN_GEOMETRY = dict(frames=5, height=96, width=160, text_len=8)  # latent 1 x 16 x 2 x 12 x 20; 8 pads 12 -> 16


@pytest.fixture(scope="session")
def tiny_wan_engines(tmp_path_factory) -> Path:
    """Tiny Wan engines (sizes 2/8, 5 frames of 96x160, text_len 8, batch 1, fp32, ONNX), built once.

    Two sizes, not three: each ONNX export costs ~20 s of a shared CPU. Read-only for tests.
    """
    from ddit_export.export.build import export_engines
    from ddit_export.export.request import ExportRequest

    out = tmp_path_factory.mktemp("tiny_wan") / "engines"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_engines(ExportRequest(family="wan", model="tiny", patch_sizes=(2, 8), dtype="fp32", out=str(out),
                                     **WAN_GEOMETRY))
    finally:
        torch.set_num_threads(before)
    return out


@pytest.fixture(scope="session")
def tiny_wan_cfg_engines(tiny_wan_engines, tmp_path_factory) -> Path:
    """The same engines at batch 2 (cond + uncond of one video in one call), for the torch backend only.

    Its manifest is `tiny_wan_engines`' with every batch dimension doubled and no artifacts: the
    torch backend rebuilds each engine from the model at the manifest's shapes (exactly what an
    export with --batch 2 traces), which saves a second ONNX export.
    """
    import json

    manifest = json.loads((tiny_wan_engines / "manifest.json").read_text())
    manifest["request"]["batch"] = 2
    manifest["latent_shape"][0] = 2
    for spec in manifest["io"]["inputs"] + manifest["io"]["outputs"]:
        spec["shape"][0] = 2
    manifest["engines"] = []
    out = tmp_path_factory.mktemp("tiny_wan_cfg") / "engines"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture
def tiny_wan_vae():
    """An `AutoencoderKLWan` (16 latent channels, 8x spatial, 4x temporal) that decodes in well under a second."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()


class CliRunner:
    """`ddit-export ARGS...` in-process; argparse's SystemExit becomes the exit code."""

    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, *argv) -> tuple[int, str]:
        """(exit code, stderr)."""
        from ddit_export.cli import main

        try:
            code = main([str(a) for a in argv])
        except SystemExit as done:
            code = done.code
        return code, self.capsys.readouterr().err.strip()

    def refuses(self, *argv, naming: tuple[str, ...] = ()) -> str:
        """Bad input: exit 2 and one line on stderr holding every string in `naming` (the flag or file)."""
        code, err = self(*argv)
        assert code == 2, err
        assert len(err.splitlines()) == 1, err
        for needle in naming:
            assert needle in err, err
        return err


@pytest.fixture
def cli(capsys) -> CliRunner:
    return CliRunner(capsys)


@pytest.fixture(scope="session")
def flux_variant_engines(tmp_path_factory):
    """name -> ONNX engines (sizes 2/4, 64x64, text_len 8, fp32) exported from a tiny pipeline folder of that
    FLUX variant (schnell, control, fill, kontext; tests/flux_variants.py), built once on first use."""
    from ddit_export.export.build import export_engines
    from ddit_export.export.request import ExportRequest
    from tests.flux_variants import HEIGHT, SIZES, TEXT_LEN, WIDTH, pipeline_folder

    built = {}

    def get(name: str):
        if name not in built:
            root = tmp_path_factory.mktemp(f"flux_{name}")
            folder = pipeline_folder(root / "pipeline", name, make_tiny_flux_vae())
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                export_engines(ExportRequest(model=str(folder), patch_sizes=SIZES, height=HEIGHT, width=WIDTH,
                                             text_len=TEXT_LEN, dtype="fp32", out=str(root / "engines")))
            finally:
                torch.set_num_threads(before)
            built[name] = root / "engines"
        return built[name]

    return get


@pytest.fixture(scope="session")
def tiny_flux_staged_engines(tmp_path_factory) -> Path:
    """The tiny FLUX engines of `tiny_flux_engines` in the staged layout (ONNX), built once. Read-only for tests."""
    from ddit_export.export.build import export_engines
    from ddit_export.export.request import ExportRequest

    out = tmp_path_factory.mktemp("tiny_flux_staged") / "engines"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_engines(ExportRequest(model="tiny", patch_sizes=(2, 4, 8), height=128, width=128, text_len=8,
                                     dtype="fp32", layout="staged", out=str(out)))
    finally:
        torch.set_num_threads(before)
    return out
