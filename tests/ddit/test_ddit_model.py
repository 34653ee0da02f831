"""DDiT on FLUX: base path identity, init properties, positions, LoRA placement, merge."""

import pytest
import torch
import torch.nn.functional as F

from ddit_export.ddit.merge import build_engine
from ddit_export.ddit.model import DDiTModel
from ddit_export.families.flux import FLUX

LATENT = FLUX.latent_shape(2, 128, 128)  # 2 x 16 x 16 x 16
TEXT = 7


def conditioning(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        encoder_hidden_states=torch.randn(batch, TEXT, 32, generator=g),
        pooled_projections=torch.randn(batch, 16, generator=g),
        timestep=torch.rand(batch, generator=g),
        guidance=torch.full((batch,), 0.0035),
    )


def randomise_ddit(model: DDiTModel, seed=3):
    """Non-zero LoRA B, patch vectors and residuals, so merge and pack tests can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "patch_vector" in name or "residual" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.05)
    return model


@pytest.fixture(scope="module")
def ddit():
    return randomise_ddit(DDiTModel(FLUX, FLUX.tiny(), [2, 4, 8]).eval())


def pipeline_style_call(transformer, latent, cond):
    """How the stock FluxPipeline calls the transformer: packed 2x2 latents and integer ids."""
    b, c, h, w = latent.shape
    packed = latent.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    out = transformer(hidden_states=packed, img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(TEXT, 3),
                      return_dict=False, **cond)[0]
    return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def test_base_path_is_bit_identical_to_the_unmodified_model(ddit):
    latent, cond = torch.randn(LATENT), conditioning()
    with torch.no_grad():
        reference = pipeline_style_call(FLUX.tiny(), latent, cond)  # same seed -> same weights, no DDiT
        assert torch.equal(ddit(latent, 2, **cond), reference)
        assert torch.equal(build_engine(ddit, 2, LATENT, TEXT)(latent, **cond), reference)


def test_pack_matches_the_pipeline_packing_and_round_trips():
    latent = torch.randn(LATENT)
    b, c, h, w = latent.shape
    pipeline = latent.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
    assert torch.equal(FLUX.pack(latent, 2), pipeline)
    for p in (2, 4, 8):
        assert torch.equal(FLUX.unpack(FLUX.pack(latent, p), p, LATENT), latent)


def upsample_tokens(tokens_p, p, P, c=16):
    """Bilinearly upsample each base token's own c x p x p patch to c x P x P (F.interpolate)."""
    n = tokens_p.shape[0]
    patches = tokens_p.reshape(n, c, p, p)
    up = F.interpolate(patches.double(), size=(P, P), mode="bilinear", align_corners=False)
    return up.reshape(n, c * P * P)


@pytest.mark.parametrize("P", [4, 8])
def test_pi_resize_embeds_an_upsampled_patch_like_the_base_patch(P):
    model = DDiTModel(FLUX, FLUX.tiny(), [2, P])
    base = model.transformer.x_embedder
    new = model.extra[str(P)].embed
    tokens = torch.randn(10, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = F.linear(tokens, base.weight.double(), base.bias.double())
        got = F.linear(upsample_tokens(tokens, 2, P), new.proj.weight.double(), new.proj.bias.double())
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.count_nonzero(new.patch_vector) == 0


@pytest.mark.parametrize("P", [4, 8])
def test_deembedding_starts_as_the_upsampled_base_prediction(P):
    model = DDiTModel(FLUX, FLUX.tiny(), [2, P])
    base, new = model.transformer.proj_out, model.extra[str(P)].deembed
    hidden = torch.randn(5, base.in_features)
    with torch.no_grad():
        assert torch.allclose(new(hidden).double(), upsample_tokens(base(hidden), 2, P), atol=1e-5)
    assert torch.count_nonzero(model.extra[str(P)].residual.weight) == 0


def test_coarse_tokens_sit_at_fractional_centres_of_the_base_grid():
    ids4 = FLUX.image_ids(4, (1, 16, 8, 8)).reshape(2, 2, 3)
    assert ids4[:, 0, 1].tolist() == [0.5, 2.5] and ids4[0, :, 2].tolist() == [0.5, 2.5]
    ids8 = FLUX.image_ids(8, (1, 16, 16, 16)).reshape(2, 2, 3)
    assert ids8[:, 0, 1].tolist() == [1.5, 5.5]
    ids2 = FLUX.image_ids(2, (1, 16, 8, 8)).reshape(4, 4, 3)
    assert ids2[:, 0, 1].tolist() == [0, 1, 2, 3]


def test_lora_wraps_every_ffn_linear_and_nothing_else():
    from peft.tuners.lora import LoraLayer

    model = DDiTModel(FLUX, FLUX.tiny(), [2, 4, 8], lora_rank=4)
    wrapped = sorted(n for n, m in model.transformer.named_modules() if isinstance(m, LoraLayer))
    assert wrapped == sorted([
        "transformer_blocks.0.ff.net.0.proj", "transformer_blocks.0.ff.net.2",
        "transformer_blocks.0.ff_context.net.0.proj", "transformer_blocks.0.ff_context.net.2",
        "single_transformer_blocks.0.proj_mlp", "single_transformer_blocks.0.proj_out",
    ])
    layer = model.transformer.transformer_blocks[0].ff.net[2]
    assert set(layer.lora_A) == {"p4", "p8"} and layer.r["p4"] == 4


@pytest.mark.parametrize("P", [4, 8])
def test_merged_engine_matches_the_adapter_model_and_has_no_peft(ddit, P):
    from peft.tuners.tuners_utils import BaseTunerLayer

    latent, cond = torch.randn(LATENT), conditioning()
    engine = build_engine(ddit, P, LATENT, TEXT)
    with torch.no_grad():
        eager, merged = ddit(latent, P, **cond), engine(latent, **cond)
        base = ddit(latent, 2, **cond)
    assert (eager - base).abs().max() > 1e-3, "adapters must change the output for this test to mean anything"
    assert torch.allclose(merged, eager, atol=1e-5)
    assert not any(isinstance(m, BaseTunerLayer) for m in engine.modules())
    assert not any("lora" in k for k in engine.state_dict())


def test_casting_an_engine_leaves_the_source_model_untouched(ddit):
    before = {k: v.clone() for k, v in ddit.state_dict().items()}
    engine = build_engine(ddit, 4, LATENT, TEXT).to(torch.bfloat16)
    assert next(engine.parameters()).dtype == torch.bfloat16
    assert engine.transformer.pos_embed.cos.dtype == torch.float32  # RoPE tables stay fp32
    after = ddit.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)


def test_a_grid_the_block_does_not_divide_is_padded_and_cropped(ddit):
    shape = (2, 16, 12, 20)  # 8 divides neither side: padded to 16 x 24
    latent, cond = torch.randn(shape), conditioning()
    assert FLUX.padded_shape(shape, 8) == (2, 16, 16, 24)
    assert FLUX.tokens(shape, 8) == 6 and FLUX.padding_tokens(shape, 8) == pytest.approx(6 - 12 * 20 / 64)
    padded = FLUX.pad(latent, 8)
    assert torch.equal(padded[..., :12, :20], latent) and torch.equal(padded[..., 15, 23], latent[..., 11, 19])
    with torch.no_grad():
        eager = ddit(latent, 8, **cond)
        engine = build_engine(ddit, 8, shape, TEXT)(latent, **cond)
    assert eager.shape == shape and torch.allclose(engine, eager, atol=1e-5)


def test_sizes_that_cannot_be_built_are_refused_clearly():
    with pytest.raises(ValueError, match="not a multiple of the base size"):
        FLUX.check_patch_sizes([2, 5], (1, 16, 20, 20))
    with pytest.raises(ValueError, match="base patch size 2 must be among"):
        FLUX.check_patch_sizes([4, 8], (1, 16, 16, 16))


def test_a_flux_model_with_fewer_latent_channels_gets_sizes_of_its_own_width():
    """FLUX tokens hold 2x2 pixels of in_channels / 4 channels; the demo model has 3, not the VAE's 16."""
    from diffusers import FluxTransformer2DModel

    from ddit_export.families.flux import FLUX_TINY_CONFIG

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(**dict(FLUX_TINY_CONFIG, in_channels=12)).eval()
    assert FLUX.latent_channels_of(transformer.config) == 3
    shape = FLUX.latent_shape(2, 128, 128, channels=3)
    assert shape == (2, 3, 16, 16)
    model = randomise_ddit(DDiTModel(FLUX, transformer, [2, 4, 8]).eval())
    assert model.extra["8"].residual.weight.shape == (3 * 64, 3 * 64)
    latent, cond = torch.randn(shape), conditioning()
    with torch.no_grad():
        assert torch.equal(model(latent, 2, **cond), pipeline_style_call(transformer, latent, cond))
        for patch in (4, 8):
            out = model(latent, patch, **cond)
            assert out.shape == shape and torch.isfinite(out).all()
            torch.testing.assert_close(build_engine(model, patch, shape, TEXT)(latent, **cond), out,
                                       atol=1e-5, rtol=1e-4)
