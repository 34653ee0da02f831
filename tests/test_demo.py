"""The embedded demo model: offline loading, class table, codec, and `ddit-export demo` end to end.

The demo's targets (speed-up, PSNR, accuracy at full N) are benchmarks, run by `ddit-export demo`
itself; here only structure and a loose accuracy floor on a handful of samples are checked.
"""

import argparse
import json

import pytest
import torch

from ddit_export.demo.classes import CLASS_NAMES, class_index
from ddit_export.demo.codec import decode, encode
from ddit_export.demo.conditioning import demo_conditioning, load_class_table
from ddit_export.demo.model import DEMO_CONFIG, DEMO_TEXT_LEN
from ddit_export.families.flux import FLUX

REPORT_KEYS = {"speedup", "psnr_db", "accuracy_base", "accuracy_ddit", "fd_base", "fd_ddit"}


@pytest.fixture(autouse=True)
def one_thread(torch_single_thread):
    """Small tensors on a shared 2-core machine: one thread is faster."""


def test_model_demo_loads_offline_and_predicts_finite_values():
    model = FLUX.load("demo")
    assert model.config._name_or_path == "demo"  # JSON-safe in engine manifests
    cond = demo_conditioning("red circle")
    latent = torch.randn(1, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = FLUX.predict(model, latent, FLUX.base_patch, {
            "encoder_hidden_states": cond.encoder_hidden_states, "pooled_projections": cond.pooled_projections,
            "timestep": torch.tensor([0.5])})
    assert out.shape == latent.shape and torch.isfinite(out).all()


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
    assert latent.shape == (2, 16, 16, 16) and latent[:, 3:].abs().sum() == 0
    assert torch.equal((decode(latent) * 255).round(), levels.view(1, 1, 16, 16).expand(2, 3, 16, 16))
    dyadic = torch.randint(0, 256, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0)) / 256
    assert torch.equal(decode(encode(dyadic)), dyadic)  # bit-exact where the affine map is exact


def test_demo_command_writes_the_report(tmp_path):
    from ddit_export.commands import demo_cmd

    parser = argparse.ArgumentParser()
    demo_cmd.add_arguments(parser)
    report = tmp_path / "report.json"
    args = parser.parse_args(["--samples", str(len(CLASS_NAMES)), "--steps", "12", "--engines",
                              str(tmp_path / "engines"), "--out", str(tmp_path / "out"), "--report", str(report)])
    assert demo_cmd.run(args) == 0
    figures = json.loads(report.read_text())
    assert REPORT_KEYS <= set(figures)
    assert figures["accuracy_base"] >= 0.8  # loose: 6 samples at 12 steps
    assert sum(figures["schedule_histogram"].values()) == len(CLASS_NAMES) * 12
    assert (tmp_path / "out" / "samples_base_vs_ddit.png").is_file()
    assert (tmp_path / "out" / "schedule.png").is_file()
    manifest = json.loads((tmp_path / "engines" / "manifest.json").read_text())
    assert manifest["latent_shape"] == [1, 16, 32, 32]  # in_channels 64 / (2 x 2)
    assert manifest["adapters"]["trained"] is True
