"""Numbers, sizes, devices and prompts a command cannot use: one line naming the flag, exit 2, before work.

Bounds come from ddit_export/util/limits.py; argparse applies them while parsing, so most of these
are refused before torch is even imported. Python callers get a ValueError or TypeError instead.
"""

import pytest
import torch

from ddit_export.export.request import ExportRequest
from ddit_export.runtime.backends import get_backend

ENGINES = "engines/never-read"  # parsing refuses these before the folder is looked at


@pytest.mark.parametrize("argv, flag", [
    (["flux", "--height", "0"], "--height"),
    (["flux", "--width", "40000"], "--width"),
    (["wan", "--frames", "-3"], "--frames"),
    (["flux", "--patch-sizes", "2,0"], "--patch-sizes"),
    (["flux", "--tau", "nan"], "--tau"),
    (["flux", "--rho", "-0.2"], "--rho"),
    (["generate", ENGINES, "--steps", "1000000000"], "--steps"),
    (["generate", ENGINES, "--steps", "0"], "--steps"),
    (["generate", ENGINES, "--seed", str(2**64)], "--seed"),
    (["generate", ENGINES, "--seed", "-1"], "--seed"),
    (["generate", ENGINES, "--tau", "-1e-3"], "--tau"),
    (["generate", ENGINES, "--rho", "inf"], "--rho"),
    (["generate", ENGINES, "--guidance", "nan"], "--guidance"),
    (["bench", ENGINES, "--iters", "0"], "--iters"),
    (["bench", ENGINES, "--seeds", "0,99999999999999999999999"], "--seeds"),
    (["calibrate", ENGINES, "--taus", "0.001,inf"], "--taus"),
    (["calibrate", ENGINES, "--tau-min", "nan"], "--tau-min"),
    (["demo", "--samples", "0"], "--samples"),
    (["train", "flux", "--out", "x", "--lr", "nan"], "--lr"),
])
def test_zero_absurd_and_non_finite_numbers_are_refused_before_any_work(cli, argv, flag):
    cli.refuses(*argv, naming=(flag,))


def test_patch_size_beyond_the_latent_grid_is_refused_before_loading_the_model(cli, tmp_path):
    out = tmp_path / "out"
    # 64x64 pixels -> an 8x8 latent grid: a 16x16 block would be three quarters padding
    cli.refuses("flux", "--model", "tiny", "--height", "64", "--width", "64", "--patch-sizes", "2,16",
                "--out", out, naming=("[16]", "8x8 latent grid"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device", ["gpu0", "cuda:99", "meta"])
def test_bogus_devices_are_refused_in_one_line(cli, tmp_path, device):
    cli.refuses("flux", "--model", "tiny", "--device", device, "--out", tmp_path / "out", naming=(device,))
    assert list(tmp_path.iterdir()) == []


def test_bogus_devices_from_python_are_value_errors(tiny_flux_engines):
    for device in ("gpu0", "cuda:99", "meta"):
        with pytest.raises(ValueError, match="device"):
            get_backend("onnx", tiny_flux_engines, device=device)
        with pytest.raises(ValueError, match="device"):
            ExportRequest(model="tiny", device=device)


def test_python_callers_get_type_and_value_errors_for_unusable_latents(tiny_flux_backends):
    backend = tiny_flux_backends["onnx"]
    shape = backend.latent_shape
    cond = {n: torch.zeros(s) for n, (s, _) in backend._inputs.items() if n != "latent"}
    with pytest.raises(TypeError, match="torch.Tensor"):
        backend(2, torch.zeros(shape).numpy(), **cond)
    with pytest.raises(ValueError, match="complex"):
        backend(2, torch.zeros(shape, dtype=torch.complex64), **cond)
    with pytest.raises(ValueError, match="meta"):
        backend(2, torch.zeros(shape, device="meta"), **cond)


def test_python_request_refuses_nan_zero_and_absurd_settings():
    for bad, match in [({"tau": float("nan")}, "--tau"), ({"rho": 1.0}, "--rho"), ({"height": 0}, "--height"),
                       ({"text_len": 10**6}, "--text-len"), ({"patch_sizes": (2, -4)}, "--patch-sizes")]:
        with pytest.raises(ValueError, match=match):
            ExportRequest(model="tiny", **bad)


def test_invalid_utf8_prompt_is_refused_naming_the_flag(cli, tiny_flux_engines, tmp_path):
    # Python hands undecodable argv bytes over as lone surrogates ("\udcff" is the byte 0xff)
    cli.refuses("generate", tiny_flux_engines, "--prompt", "a \udcff fox", "--out", tmp_path / "out",
                naming=("--prompt", "UTF-8"))
    assert not (tmp_path / "out").exists()


def test_cpu_export_defaults_to_fp32_and_tiny_to_a_small_size():
    request = ExportRequest(model="tiny", device="cpu")
    assert (request.dtype, request.height, request.width) == ("fp32", 128, 128)
    assert ExportRequest(model="tiny", device="cpu", dtype="bf16").dtype == "bf16"  # asked for: kept
    assert ExportRequest(family="wan", model="tiny", device="cpu").frames == 5


def test_the_default_model_missing_offline_points_to_a_preset(cli, tmp_path):
    from huggingface_hub import try_to_load_from_cache

    if try_to_load_from_cache("black-forest-labs/FLUX.1-dev", "transformer/config.json"):
        pytest.skip("FLUX.1-dev is in this machine's cache: the export would start")
    cli.refuses("flux", "--patch-sizes", "2,4", "--out", tmp_path / "out", naming=("--model tiny", "offline"))
    assert list(tmp_path.iterdir()) == []


def test_training_config_refuses_a_zero_height_and_sizes_tiny_small(tmp_path):
    from ddit_export.train.config import TrainConfig

    with pytest.raises(ValueError, match="--height"):
        TrainConfig(out=str(tmp_path / "out"), model="tiny", height=0, prompts=str(tmp_path / "p.txt"))
    (tmp_path / "p.txt").write_text("a red fox\n")
    config = TrainConfig(out=str(tmp_path / "out"), model="tiny", prompts=str(tmp_path / "p.txt"))
    assert (config.height, config.width) == (128, 128)
