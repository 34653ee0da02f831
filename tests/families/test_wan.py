"""Wan 2.1 family: the same guarantees as FLUX, on video latents, plus padding and the frames rule."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from ddit_export.artifacts.iospec import IOSpec, random_feed
from ddit_export.cli import main
from ddit_export.ddit.merge import build_engine, cast_engine
from ddit_export.ddit.model import DDiTModel
from ddit_export.families.wan import WAN, FractionalWanRope
from tests.ddit.test_ddit_model import randomise_ddit

SHAPE = WAN.latent_shape(2, 96, 160, 5)  # 2 x 16 x 2 x 12 x 20: 8 divides neither 12 nor 20
TEXT = 6


def conditioning(batch=2):
    g = torch.Generator().manual_seed(5)
    return dict(encoder_hidden_states=torch.randn(batch, TEXT, 32, generator=g),
                timestep=torch.rand(batch, generator=g) * 1000)


@pytest.fixture(scope="module")
def ddit():
    return randomise_ddit(DDiTModel(WAN, WAN.tiny(), [2, 4, 8]).eval())


def test_latent_geometry_and_the_frames_rule():
    assert SHAPE == (2, 16, 2, 12, 20)
    assert WAN.latent_shape(1, 480, 832, 81) == (1, 16, 21, 60, 104)
    assert WAN.tokens((1, 16, 21, 60, 104), 8) == 21 * 8 * 13  # padded to 64 x 104
    with pytest.raises(ValueError, match="--frames must be 4k\\+1"):
        WAN.check_image_size(480, 832, 80)


def test_base_path_is_bit_identical_to_the_unmodified_model(ddit):
    latent, cond = torch.randn(SHAPE), conditioning()
    with torch.no_grad():
        reference = WAN.tiny()(hidden_states=latent, return_dict=False, **cond)[0]
        assert torch.equal(ddit(latent, 2, **cond), reference)
        assert torch.equal(build_engine(ddit, 2, SHAPE, TEXT)(latent, **cond), reference)


def test_fractional_rope_reproduces_wans_rope_at_the_base_size_and_centres_coarse_tokens():
    model = WAN.tiny()
    latent = torch.randn(1, 16, 3, 8, 12)
    base = model.rope(latent)
    same = FractionalWanRope(model.rope, 2, 2)(latent)
    assert torch.equal(base[0], same[0]) and torch.equal(base[1], same[1])
    cos4, _ = FractionalWanRope(model.rope, 4, 2)(latent)
    assert cos4.shape == (1, 3 * 2 * 3, 1, base[0].shape[-1])
    # the first coarse token's row position 0.5 sits halfway between base rows 0 and 1
    t, h, _ = model.rope.t_dim, model.rope.h_dim, model.rope.w_dim
    angle = lambda c: torch.acos(c.clamp(-1, 1))  # noqa: E731
    row_angle_base = angle(base[0][0, :, 0, t:t + h].reshape(3, 4, 6, h)[0, 1, 0, 0])
    assert angle(cos4[0, 0, 0, t]).item() == pytest.approx(row_angle_base.item() / 2, abs=1e-6)


@pytest.mark.parametrize("P", [4, 8])
def test_pi_resized_conv_embeds_an_upsampled_patch_like_the_base_patch(P):
    model = DDiTModel(WAN, WAN.tiny(), [2, P])
    base, new = model.transformer.patch_embedding, model.extra[str(P)].embed
    small = torch.randn(1, 16, 1, 2, 2, dtype=torch.float64)
    up = F.interpolate(small[:, :, 0], size=(P, P), mode="bilinear", align_corners=False)[:, :, None]
    with torch.no_grad():
        expected = F.conv3d(small, base.weight.double(), base.bias.double(), stride=(1, 2, 2))
        got = F.conv3d(up, new.proj.weight.double(), new.proj.bias.double(), stride=(1, P, P))
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("P", [4, 8])
def test_deembedding_starts_as_the_upsampled_base_prediction_in_wans_channel_last_layout(P):
    model = DDiTModel(WAN, WAN.tiny(), [2, P])
    base, new = model.transformer.proj_out, model.extra[str(P)].deembed
    hidden = torch.randn(3, base.in_features)
    with torch.no_grad():
        small = base(hidden).reshape(3, 2, 2, 16).permute(0, 3, 1, 2).double()  # (dy, dx, c) -> (c, dy, dx)
        big = new(hidden).reshape(3, P, P, 16).permute(0, 3, 1, 2).double()
    assert torch.allclose(big, F.interpolate(small, size=(P, P), mode="bilinear", align_corners=False), atol=1e-5)


def test_lora_wraps_every_ffn_linear_and_nothing_else():
    from peft.tuners.lora import LoraLayer

    model = DDiTModel(WAN, WAN.tiny(), [2, 4])
    wrapped = sorted(n for n, m in model.transformer.named_modules() if isinstance(m, LoraLayer))
    assert wrapped == [f"blocks.{i}.ffn.net.{j}" for i in (0, 1) for j in ("0.proj", "2")]


@pytest.mark.parametrize("P", [4, 8])
def test_merged_padded_engine_matches_the_adapter_model(ddit, P):
    latent, cond = torch.randn(SHAPE), conditioning()
    with torch.no_grad():
        eager, merged = ddit(latent, P, **cond), build_engine(ddit, P, SHAPE, TEXT)(latent, **cond)
        base = ddit(latent, 2, **cond)
    assert eager.shape == SHAPE and (eager - base).abs().max() > 1e-3
    assert torch.allclose(merged, eager, atol=1e-5)
    assert ddit.transformer.config.patch_size == (1, 2, 2), "the size's config must be restored"


def test_bf16_engine_keeps_wans_fp32_modules(ddit):
    engine = cast_engine(build_engine(ddit, 4, SHAPE, TEXT), torch.bfloat16)
    t = engine.transformer
    assert t.blocks[0].ffn.net[2].weight.dtype == torch.bfloat16
    assert t.scale_shift_table.dtype == torch.float32
    assert t.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    out = tmp_path_factory.mktemp("wan") / "engines"
    code = main(["wan", "--model", "tiny", "--patch-sizes", "2,4,8", "--frames", "5", "--height", "96",
                 "--width", "160", "--text-len", "8", "--dtype", "fp32", "--out", str(out)])
    assert code == 0
    return out


def test_cli_writes_three_validated_engines_with_identical_io_and_reports_padding(engines):
    m = json.loads((engines / "manifest.json").read_text())
    assert m["family"] == "wan" and m["latent_shape"] == [1, 16, 2, 12, 20]
    assert [t["name"] for t in m["io"]["inputs"]] == ["latent", "encoder_hidden_states", "timestep"]
    by_size = {e["patch_size"]: e for e in m["engines"]}
    assert by_size[8]["padded_grid"] == [16, 24] and by_size[8]["tokens"] == 2 * 2 * 3
    assert by_size[8]["padding_tokens"] == pytest.approx(12 - 2 * 12 * 20 / 64)
    assert by_size[4]["padding_tokens"] == 0
    for e in m["engines"]:
        assert e["validation"]["passed"]
        assert IOSpec.from_onnx(engines / e["files"][0]).to_json() == m["io"]


def test_engines_run_in_plain_onnxruntime_from_the_manifest(engines):
    m = json.loads((engines / "manifest.json").read_text())
    spec = IOSpec.from_json(m["io"])
    feed = random_feed(spec, seed=1)
    for e in m["engines"]:
        session = ort.InferenceSession(str(engines / e["files"][0]), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, feed)
        assert out.shape == (1, 16, 2, 12, 20) and np.isfinite(out).all()


def test_bad_frames_is_one_line_exit_2(tmp_path, capsys):
    assert main(["wan", "--model", "tiny", "--frames", "6", "--height", "96", "--width", "160",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--frames must be 4k+1" in capsys.readouterr().err and not (tmp_path / "x").exists()
