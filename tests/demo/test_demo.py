"""The embedded demo model: offline loading, class table, codec, and `ddit-export demo` end to end.

The demo's targets (speed-up, PSNR, accuracy at full N) are benchmarks, run by `ddit-export demo`
itself; here only structure and a loose accuracy floor on a handful of samples are checked.
"""

import argparse
import json

import pytest
import torch

from ddit_export.demo.tuning import DEMO_RULE, DEMO_SIZES, DEMO_TAU, demo_error_model
from ddit_export.families.flux import FLUX
from ddit_export.pipelines.demo.class_table import demo_conditioning, load_class_table
from ddit_export.pipelines.demo.classes import CLASS_NAMES, class_index
from ddit_export.pipelines.demo.codec import PADDED_CHANNELS, decode, encode
from ddit_export.pipelines.demo.model import (
    DEMO_CONFIG,
    DEMO_TEXT_LEN,
    build_padded_transformer,
    narrow_to_pixel_channels,
)

REPORT_KEYS = {"speedup", "psnr_db", "accuracy_base", "accuracy_ddit", "fd_base", "fd_ddit", "token_cost",
               "schedules", "distinct_schedules", "token_cost_per_class", "token_cost_flat", "token_cost_textured",
               "fd_ratio", "fd_noise_floor", "samples", "seeds"}
# every quality figure carries its 95% interval beside it (docs/quality.md)
CI_KEYS = ("accuracy_base", "accuracy_ddit", "fd_base", "fd_ddit", "fd_ratio", "fd_noise_floor", "psnr_db", "speedup")


@pytest.fixture(autouse=True)
def one_thread(torch_single_thread):
    """Small tensors on a shared 2-core machine: one thread is faster."""


def test_model_demo_loads_offline_and_predicts_finite_values():
    model = FLUX.load("demo")
    assert model.config._name_or_path == "demo"  # JSON-safe in engine manifests
    cond = demo_conditioning("red circle")
    latent = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = FLUX.predict(model, latent, FLUX.base_patch, {
            "encoder_hidden_states": cond.encoder_hidden_states, "pooled_projections": cond.pooled_projections,
            "timestep": torch.tensor([0.5])})
    assert out.shape == latent.shape and torch.isfinite(out).all()


def test_narrowing_keeps_exactly_what_the_padded_model_does_on_the_pixel_channels():
    """The second training phase starts from the padded model's function, not a fresh one."""
    padded = build_padded_transformer(seed=3)
    narrow = narrow_to_pixel_channels(padded)
    assert narrow.config.in_channels == DEMO_CONFIG["in_channels"] == 12
    cond = demo_conditioning("green square")
    inputs = {"encoder_hidden_states": cond.encoder_hidden_states, "pooled_projections": cond.pooled_projections,
              "timestep": torch.tensor([0.7])}
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = FLUX.predict(narrow, pixels, FLUX.base_patch, inputs)
        reference = FLUX.predict(padded, encode((pixels + 1) / 2, PADDED_CHANNELS), FLUX.base_patch, inputs)
    assert reference.abs().mean() > 0.1  # a fresh FLUX's output layer is not zero: the check has teeth
    torch.testing.assert_close(out, reference[:, :3], rtol=1e-5, atol=1e-5)


def test_class_table_covers_every_class():
    names, table = load_class_table()
    assert names == CLASS_NAMES
    assert table["encoder_hidden_states"].shape == (len(names), DEMO_TEXT_LEN, DEMO_CONFIG["joint_attention_dim"])
    assert table["pooled_projections"].shape == (len(names), DEMO_CONFIG["pooled_projection_dim"])
    rows = {demo_conditioning(name).pooled_projections[0].sum().item() for name in names}
    assert len(rows) == len(names)  # every class has its own embeddings
    assert class_index("  Cyan   RING ") == CLASS_NAMES.index("cyan ring")
    with pytest.raises(ValueError, match="red circle"):
        class_index("a photo of a cat")


def test_codec_round_trips_exactly():
    levels = torch.arange(256, dtype=torch.float32)
    images = (levels / 255).view(1, 1, 16, 16).expand(2, 3, 16, 16)
    latent = encode(images)
    assert latent.shape == (2, 3, 16, 16) and latent.min() == -1 and latent.max() == 1
    assert torch.equal((decode(latent) * 255).round(), levels.view(1, 1, 16, 16).expand(2, 3, 16, 16))
    padded = encode(images, PADDED_CHANNELS)  # the first training phase's layout
    assert padded.shape == (2, 16, 16, 16) and torch.equal(padded[:, :3], latent) and padded[:, 3:].abs().sum() == 0
    assert torch.equal(decode(padded), decode(latent))
    dyadic = torch.randint(0, 256, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0)) / 256
    assert torch.equal(decode(encode(dyadic)), dyadic)  # bit-exact where the affine map is exact


def test_demo_command_writes_the_report(tmp_path, capsys):
    from ddit_export.commands import demo_cmd

    parser = argparse.ArgumentParser()
    demo_cmd.add_arguments(parser)
    report = tmp_path / "report.json"
    args = parser.parse_args(["--samples", str(len(CLASS_NAMES)), "--steps", "12", "--tau", "1", "--rule", "paper",
                              "--sizes", "2,4", "--engines", str(tmp_path / "engines"), "--out", str(tmp_path / "out"),
                              "--report", str(report)])
    assert demo_cmd.run(args) == 0
    figures = json.loads(report.read_text())
    assert REPORT_KEYS <= set(figures)
    for key in CI_KEYS:
        lo, hi = figures[f"{key}_ci"]
        assert lo <= figures[key] <= hi, key
    assert figures["samples"] == len(CLASS_NAMES) and figures["seeds"] == [0, len(CLASS_NAMES) - 1]
    assert figures["fd_halves_samples"] == [5, 4]  # even / odd sample indices: disjoint seeds
    assert f"{len(CLASS_NAMES)} samples behind every figure" in capsys.readouterr().out
    assert figures["accuracy_base"] >= 0.7  # loose: 9 samples at 12 steps
    assert sum(figures["schedule_histogram"].values()) == len(CLASS_NAMES) * 12
    assert figures["scheduler_sizes"] == [2, 4] and figures["rule"] == "paper"
    # tau 1: the paper's rule runs the 3 warm-up steps at the base, then the coarsest allowed size.
    assert figures["schedule_histogram"]["8"] == 0 and figures["schedule_histogram"]["4"] == len(CLASS_NAMES) * 9
    assert figures["token_cost"] == pytest.approx((3 + 9 / 4) / 12) and figures["distinct_schedules"] == 1
    assert set(figures["token_cost_per_class"]) == set(CLASS_NAMES)
    # A fixed schedule: every sample runs it, the report names it and costs it.
    fixed = tmp_path / "fixed.json"
    args = parser.parse_args(["--samples", str(len(CLASS_NAMES)), "--schedule", "8x6,2x6", "--engines",
                              str(tmp_path / "engines"), "--out", str(tmp_path / "out"), "--report", str(fixed)])
    assert demo_cmd.run(args) == 0
    fixed = json.loads(fixed.read_text())
    assert fixed["steps"] == 12 and fixed["fixed_schedule"] == "8x6,2x6" and fixed["tau"] is None
    assert fixed["schedules"] == [[8] * 6 + [2] * 6] * len(CLASS_NAMES)
    assert fixed["token_cost"] == pytest.approx((6 / 16 + 6) / 12)
    assert set(figures["ort_cpu_threading"]) == {"2", "4", "8"}
    assert (tmp_path / "out" / "samples_base_vs_ddit.png").is_file()
    assert (tmp_path / "out" / "schedule.png").is_file()
    # `generate` on the demo engines needs no text encoder and decodes with the demo's own codec.
    from PIL import Image

    from ddit_export.cli import main

    assert main(["generate", str(tmp_path / "engines"), "--prompt", "cyan ring", "--steps", "6",
                 "--out", str(tmp_path / "gen")]) == 0
    assert Image.open(tmp_path / "gen" / "image.png").size == (256, 256)  # 32 x 32 pixels, shown 8x
    trace = json.loads((tmp_path / "gen" / "trace.json").read_text())
    assert (trace["tau"], trace["patch_sizes"]) == (DEMO_TAU, list(DEMO_SIZES))  # scheduled as the demo is
    assert main(["generate", str(tmp_path / "engines"), "--prompt", "a red fox", "--out", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "no").exists()
    manifest = json.loads((tmp_path / "engines" / "manifest.json").read_text())
    assert manifest["scheduler"]["tau"] == DEMO_TAU and manifest["scheduler"]["patch_sizes"] == list(DEMO_SIZES) \
        and manifest["scheduler"]["rule"] == DEMO_RULE == "predicted-error"
    assert manifest["scheduler"]["error_model"] == demo_error_model()  # the fit shipped with the demo
    assert manifest["latent_shape"] == [1, 3, 32, 32]  # the model's own 3 channels, not FLUX's 16
    assert manifest["adapters"]["trained"] is True


@pytest.mark.parametrize("sizes", ["4,8", "2,16"])
def test_demo_refuses_sizes_its_engines_lack_before_writing_anything(tmp_path, capsys, sizes):
    from ddit_export.commands import demo_cmd

    parser = argparse.ArgumentParser()
    demo_cmd.add_arguments(parser)
    args = parser.parse_args(["--sizes", sizes, "--engines", str(tmp_path / "engines"), "--out", str(tmp_path / "out")])
    assert demo_cmd.run(args) == 2
    assert "--sizes must be some of the demo's engine sizes 2,4,8" in capsys.readouterr().err
    assert not (tmp_path / "engines").exists() and not (tmp_path / "out").exists()
