"""The FLUX model half for FLUX.1-schnell, Depth/Canny, Fill and Kontext: the base-size engine equals the
transformer called as each stock pipeline calls it, every coarse size runs, unsupported configs are refused."""

from __future__ import annotations

import json

import pytest
import torch

from ddit_export.ddit.merge import build_engine
from ddit_export.ddit.model import DDiTModel
from ddit_export.families.base import ModelLoadError
from ddit_export.families.flux import FLUX, condition_channels, variant_of
from tests.flux_variants import CONFIGS, TEXT_LEN, diffusers_forward, stock_inputs, tiny_transformer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SHAPE = (1, 16, 8, 12)  # 64 x 96 pixels: size 8 pads the 12 columns to 16


def conditioning(model, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    cond = {"encoder_hidden_states": torch.randn(1, TEXT_LEN, 32, generator=gen),
            "pooled_projections": torch.randn(1, 16, generator=gen), "timestep": torch.tensor([0.7])}
    if model.config.guidance_embeds:
        cond["guidance"] = torch.tensor([3.5])
    return cond


@pytest.mark.parametrize("name", ["schnell", "control", "fill", "kontext"])
def test_base_engine_equals_the_transformer_called_as_its_stock_pipeline_does(name):
    transformer = tiny_transformer(name)
    latent = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    cond, grid = conditioning(transformer), stock_inputs(name, SHAPE)
    with torch.no_grad():
        expected = diffusers_forward(transformer, latent, cond, grid)
        model = DDiTModel(FLUX, transformer, (2, 4, 8)).eval()
        engine = build_engine(model, 2, SHAPE, TEXT_LEN)
        got = engine(latent, **cond, **grid)
        eager = model(latent, 2, **cond, **grid)
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-4 * scale
    assert (eager - expected).abs().max() <= 1e-4 * scale
    # The conditioning reaches the output: another control / reference image gives another prediction.
    if grid:
        other = {k: v.flip(-1) for k, v in grid.items()}
        with torch.no_grad():
            assert not torch.allclose(engine(latent, **cond, **other), got)


@pytest.mark.parametrize("name", ["control", "fill", "kontext"])
def test_every_coarse_size_runs_on_the_padded_grid(name):
    model = DDiTModel(FLUX, tiny_transformer(name), (2, 4, 8)).eval()
    latent = torch.randn(SHAPE)
    cond, grid = conditioning(model.transformer), stock_inputs(name, SHAPE)
    engine = build_engine(model, 8, SHAPE, TEXT_LEN)
    inputs = engine.sample_inputs()
    assert list(inputs)[-1] == next(iter(grid)) and inputs[next(iter(grid))].shape == grid[next(iter(grid))].shape
    with torch.no_grad():
        for p in (4, 8):
            out = build_engine(model, p, SHAPE, TEXT_LEN)(latent, **cond, **grid)
            assert out.shape == SHAPE and torch.isfinite(out).all()
            assert torch.allclose(out, model(latent, p, **cond, **grid), atol=1e-5)  # engine = eager DDiT model


def test_variants_are_told_apart_by_config():
    assert [variant_of(tiny_transformer(n).config) for n in CONFIGS] == [
        "FluxPipeline", "FluxControlPipeline", "FluxFillPipeline", "FluxKontextPipeline"]
    assert [condition_channels(CONFIGS[n]) for n in CONFIGS] == [0, 16, 80, 0]
    assert {FLUX.latent_channels_of(tiny_transformer(n).config) for n in CONFIGS} == {16}
    # The grid specs follow the latent's shape; the manifest's plain dict config reads the same.
    kontext = dict(tiny_transformer("kontext").config)
    assert FLUX.grid_specs(kontext, SHAPE) == [("reference_latent", SHAPE)]
    assert FLUX.grid_specs(CONFIGS["fill"], SHAPE) == [("condition_latent", (1, 80, 8, 12))]


@pytest.mark.parametrize("change, message", [
    ({"in_channels": 100}, "in_channels=100, out_channels=64 is not a FLUX layout"),
    ({"in_channels": 32, "out_channels": 64}, "in_channels=32, out_channels=64"),
    ({"patch_size": 2}, "patch_size=2"),
    ({"_class_name": "SD3Transformer2DModel"}, "transformer is a SD3Transformer2DModel; `ddit-export flux` exports"),
])
def test_unsupported_configs_are_refused_from_config_json_alone(tmp_path, change, message):
    folder = tmp_path / "model"
    (folder / "transformer").mkdir(parents=True)
    config = {"_class_name": "FluxTransformer2DModel", **CONFIGS["control"], **change}
    (folder / "transformer" / "config.json").write_text(json.dumps(config))  # no weights: never reached
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(").replace("`", "`")):
        FLUX.load(str(folder))


def test_kontext_with_extra_channels_is_refused(tmp_path):
    folder = tmp_path / "model"
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text(json.dumps(CONFIGS["control"]))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxKontextPipeline"}))
    with pytest.raises(ModelLoadError, match="FluxKontextPipeline with in_channels=128"):
        FLUX.load(str(folder))


def test_kontext_reference_tokens_keep_their_base_embedding_at_every_size():
    """Base 2x2 patches upsampled into size P's feature space: the PI-resized embedding of an untrained size
    embeds them exactly as the base embedding does (the reference keeps its base resolution)."""
    model = DDiTModel(FLUX, tiny_transformer("kontext"), (2, 4, 8)).eval()
    reference = torch.randn(SHAPE)
    base = model.transformer.x_embedder(FLUX.pack(reference, 2))
    for p in (4, 8):
        tokens = FLUX.reference_tokens(FLUX.pad(reference, p), p)
        assert tokens.shape[1] == FLUX.tokens(FLUX.padded_shape(SHAPE, p), 2)  # base-size token count (padded)
        embedded = model.extra[str(p)].embed(tokens)
        if p == 4:  # no padding at 4: every token compares
            assert torch.allclose(embedded, base, atol=1e-5)
        else:  # padded columns 12 -> 16: the grid's own tokens compare (row-major, 6 of 8 per row)
            grid = embedded.reshape(1, 4, 8, -1)[:, :, :6].reshape(1, 24, -1)
            assert torch.allclose(grid, base, atol=1e-5)


def test_kontext_reference_size_is_an_export_choice_recorded_in_the_config():
    """"step" (default) packs the reference like the latent; "base" keeps its base tokens: same at the base size,
    different sequences at coarse sizes, and the engine follows the eager model either way."""
    latent, reference = torch.randn(SHAPE), torch.randn(SHAPE)
    outputs = {}
    for size in ("step", "base"):
        transformer = tiny_transformer("kontext")
        FLUX.apply_request(transformer, {"kontext_reference": size} if size == "base" else {})
        model = DDiTModel(FLUX, transformer, (2, 4)).eval()
        cond = conditioning(transformer)
        assert model.config["_ddit_reference_size"] == size
        with torch.no_grad():
            engine = build_engine(model, 4, SHAPE, TEXT_LEN)
            assert engine.transformer.config["_ddit_reference_size"] == size  # survives the merge
            outputs[size] = {p: model(latent, p, **cond, reference_latent=reference) for p in (2, 4)}
            assert torch.allclose(engine(latent, **cond, reference_latent=reference), outputs[size][4], atol=1e-5)
        tokens = engine.transformer.pos_embed.cos.shape[0] - TEXT_LEN
        assert tokens == FLUX.tokens(SHAPE, 4) + FLUX.tokens(SHAPE, 4 if size == "step" else 2)
    assert torch.equal(outputs["step"][2], outputs["base"][2])
    assert not torch.allclose(outputs["step"][4], outputs["base"][4])
    with pytest.raises(ValueError, match="--kontext-reference applies to FLUX.1-Kontext models"):
        FLUX.apply_request(tiny_transformer("control"), {"kontext_reference": "base"})


def test_a_cached_hub_model_is_checked_from_its_config_before_loading(tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "models--me--odd-flux" / "snapshots" / "abc"
    (snapshot / "transformer").mkdir(parents=True)
    (tmp_path / "models--me--odd-flux" / "refs").mkdir()
    (tmp_path / "models--me--odd-flux" / "refs" / "main").write_text("abc")
    (snapshot / "transformer" / "config.json").write_text(json.dumps(dict(CONFIGS["fill"], in_channels=200)))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="in_channels=200, out_channels=64 is not a FLUX layout"):
        FLUX.load("me/odd-flux")
