"""Wan 2.1 family, the model half: the same guarantees as FLUX (tests/ddit), on video latents, plus padding and
the frames rule."""

import pytest
import torch
import torch.nn.functional as F

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
