"""Wan variants, the model half: I2V / FLF2V (condition channels on the grid, CLIP image embeddings),
TI2V-5B (48 channels, 16x VAE), and the one-line refusal of Wan configs the engines cannot express."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ddit_export.ddit.merge import build_engine
from ddit_export.ddit.model import DDiTModel
from ddit_export.ddit.staged import build_staged
from ddit_export.families.wan import WAN, WAN_TINY_CONFIG
from tests.wan_variants import FLF2V_CONFIG, I2V_CONFIG, TI2V_CONFIG, relative, transformer

pytestmark = pytest.mark.usefixtures("torch_single_thread")
SHAPE = (1, 16, 2, 12, 20)


@pytest.mark.parametrize("config, images", [(I2V_CONFIG, 1), (FLF2V_CONFIG, 2)])
def test_image_to_video_engines_equal_the_forward_at_the_base_and_run_every_size(config, images):
    model = transformer(config)
    ddit = DDiTModel(WAN, model, [2, 4, 8]).eval()
    g = torch.Generator().manual_seed(0)
    latent, condition = torch.randn(SHAPE, generator=g), torch.randn(1, 20, 2, 12, 20, generator=g)
    text, image = torch.randn(1, 6, 32, generator=g), torch.randn(images, 257, 16, generator=g)
    t = torch.tensor([321.0])
    with torch.no_grad():
        ref = model(hidden_states=torch.cat([latent, condition], 1), timestep=t, encoder_hidden_states=text,
                    encoder_hidden_states_image=image, return_dict=False)[0]
        for patch in (2, 4, 8):
            engine = build_engine(ddit, patch, SHAPE, 6)
            specs = {k: tuple(v.shape) for k, v in engine.sample_inputs().items()}
            assert specs["condition_latent"] == (1, 20, 2, 12, 20)
            assert specs["encoder_hidden_states_image"] == (images, 257, 16)  # FLF2V: first and last frame
            out = engine(latent, text, t, condition_latent=condition, encoder_hidden_states_image=image)
            assert out.shape == SHAPE and torch.isfinite(out).all()
            if patch == 2:
                assert relative(out, ref) <= 1e-6


@pytest.mark.parametrize("P", [4, 8])
def test_the_coarse_embedding_pi_resizes_all_36_input_channels(P):
    ddit = DDiTModel(WAN, transformer(I2V_CONFIG), [2, P])
    base, new = ddit.transformer.patch_embedding, ddit.extra[str(P)].embed
    assert new.proj.weight.shape[1] == 36 and ddit.extra[str(P)].deembed.out_features == 16 * P * P
    small = torch.randn(1, 36, 1, 2, 2, dtype=torch.float64)
    up = F.interpolate(small[:, :, 0], size=(P, P), mode="bilinear", align_corners=False)[:, :, None]
    with torch.no_grad():
        expected = F.conv3d(small, base.weight.double(), base.bias.double(), stride=(1, 2, 2))
        got = F.conv3d(up, new.proj.weight.double(), new.proj.bias.double(), stride=(1, P, P))
    assert torch.allclose(got, expected, atol=1e-5)


def test_ti2v_latent_geometry_and_the_staged_chain():
    assert WAN.latent_shape(1, 704, 1280, 121, 48) == (1, 48, 31, 44, 80)  # Wan 2.2 TI2V-5B at 720p
    with pytest.raises(ValueError, match="multiples of 32 for a 48-channel Wan latent"):
        WAN.latent_shape(1, 720, 1280, 81, 48)
    shape = (1, 48, 2, 8, 12)
    ddit = DDiTModel(WAN, transformer(TI2V_CONFIG), [2, 4]).eval()
    staged = build_staged(ddit, shape, 8)
    for patch in (2, 4):
        engine = build_engine(ddit, patch, shape, 8)
        inputs = engine.sample_inputs(torch.float32, seed=patch)
        with torch.no_grad():
            want = engine(**inputs)
            got = staged(patch, inputs.pop("latent"), **inputs)
        assert want.shape == shape and (got - want).abs().max() < 1e-5


def _folder(tmp_path, config: dict, pipeline: str | None = None):
    """A transformer config without weights: a refusal must come before any weights are looked for."""
    (tmp_path / "m" / "transformer").mkdir(parents=True)
    (tmp_path / "m" / "transformer" / "config.json").write_text(json.dumps(config))
    if pipeline:
        (tmp_path / "m" / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    return tmp_path / "m"


@pytest.mark.parametrize("config, pipeline, naming", [
    ({"_class_name": "WanVACETransformer3DModel"}, None, "WanVACETransformer3DModel"),
    ({"_class_name": "WanTransformer3DModel", "patch_size": [1, 4, 4]}, None, "patch_size [1, 4, 4]"),
    ({"_class_name": "WanTransformer3DModel", "in_channels": 16, "out_channels": 48}, None, "in_channels 16 < out"),
    ({"_class_name": "WanTransformer3DModel", "image_dim": 1280}, None, "added_kv_proj_dim"),
    ({"_class_name": "WanTransformer3DModel"}, "WanAnimatePipeline", "WanAnimatePipeline"),
])
def test_unsupported_wan_models_are_refused_in_one_line_before_loading(tmp_path, cli, config, pipeline, naming):
    model = _folder(tmp_path, {**WAN_TINY_CONFIG, **config}, pipeline)
    err = cli.refuses("wan", "--model", str(model), "--frames", "5", "--height", "96", "--width", "160",
                      "--out", str(tmp_path / "e"), naming=(naming,))
    assert "weights" not in err and not (tmp_path / "e").exists()


def test_staged_layout_refuses_image_to_video_in_one_line(tmp_path, cli):
    model = tmp_path / "i2v"
    transformer(I2V_CONFIG).save_pretrained(model)
    cli.refuses("wan", "--model", str(model), "--layout", "staged", "--frames", "5", "--height", "96", "--width",
                "160", "--out", str(tmp_path / "e"), naming=("staged layout", "condition_latent", "Wan I2V"))
    assert not (tmp_path / "e").exists()
