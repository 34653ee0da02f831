"""Wan 2.2 TI2V-5B: a 48-channel latent (Wan 2.2 VAE, 16x spatial) and WanPipeline's per-token timesteps
(`expand_timesteps`), against stock diffusers; `generate` on the folder's scheduler, VAE and text encoder."""

from __future__ import annotations

import json

import pytest
import torch

from ddit_export.cli import main
from ddit_export.pipelines.registry import generate, make_conditioning
from ddit_export.pipelines.wan_dropin import DDiTWanTransformer
from ddit_export.runtime.backends import get_backend
from ddit_export.runtime.runner import schedule_config
from tests.wan_variants import TI2V_VIDEO, export_pipeline, relative, ti2v_pipeline

pytestmark = pytest.mark.usefixtures("torch_single_thread")
STEPS = 5
SHAPE = (1, 48, 2, 8, 12)


@pytest.fixture(scope="module")
def ti2v(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_ti2v")
    pipe = ti2v_pipeline()
    backend = get_backend("onnx", export_pipeline(root, pipe, (2, 4), frames=5, height=128, width=192))
    yield pipe, root, backend
    backend.close()


def call(pipe, **kwargs):
    args = dict(prompt="a red fox", negative_prompt="blurry", guidance_scale=5.0, num_inference_steps=STEPS,
                max_sequence_length=8, output_type="latent", generator=torch.Generator().manual_seed(0), **TI2V_VIDEO)
    return pipe(**{**args, **kwargs}).frames


def test_latent_is_48_channels_on_a_16x_grid(ti2v):
    _, _, backend = ti2v
    assert tuple(backend.latent_shape) == SHAPE
    assert {t.name for t in backend.manifest.io.inputs} == {"latent", "encoder_hidden_states", "timestep"}


def test_base_engine_equals_the_diffusers_forward_with_per_token_timesteps(ti2v):
    pipe, _, backend = ti2v
    g = torch.Generator().manual_seed(3)
    latent, text = torch.randn(SHAPE, generator=g), torch.randn(1, 8, 32, generator=g)
    per_token = torch.full((1, 2 * 4 * 6), 640.0)  # what WanPipeline passes with expand_timesteps
    with torch.no_grad():
        ref = pipe.transformer(hidden_states=latent, timestep=per_token, encoder_hidden_states=text,
                               return_dict=False)[0]
    out = backend(2, latent, encoder_hidden_states=text, timestep=torch.tensor([640.0]))
    assert relative(out, ref) <= 1e-4
    coarse = backend(4, latent, encoder_hidden_states=text, timestep=torch.tensor([640.0]))
    assert coarse.shape == SHAPE and torch.isfinite(coarse).all()


def test_drop_in_in_the_stock_pipeline_static_base_and_coarse(ti2v):
    pipe, _, backend = ti2v
    stock = call(pipe)
    real = pipe.transformer
    try:
        pipe.transformer = DDiTWanTransformer(backend, schedule_config(backend, static_patch=2))
        assert relative(call(pipe), stock) <= 1e-4
        pipe.transformer = DDiTWanTransformer(backend, schedule_config(backend, tau=1e9))
        coarse = call(pipe)
        assert pipe.transformer.trace.schedule == [2, 2, 2, 4, 4]
        assert torch.isfinite(coarse).all()
        with pytest.raises(ValueError, match="per-token timesteps that differ"):
            pipe.transformer(torch.randn(SHAPE), torch.tensor([[999.0] * 47 + [0.0]]), torch.randn(1, 8, 32))
    finally:
        pipe.transformer = real


def test_generate_uses_the_folders_scheduler_encoder_and_vae(ti2v, tmp_path):
    pipe, root, backend = ti2v
    manifest = backend.manifest
    cond = make_conditioning(manifest, "a red fox", 5.0, negative_prompt="blurry")
    assert cond.source == f"text encoder of {root / 'model'}"
    ours = generate(backend, cond, schedule_config(backend, static_patch=2), steps=STEPS, seed=0).latent
    assert relative(ours, call(pipe)) <= 1e-4  # stock WanPipeline: same UniPC (flow_shift 5 from scheduler/), noise
    code = main(["generate", str(root / "engines"), "--steps", "2", "--out", str(tmp_path / "out"),
                 "--prompt", "a red fox"])
    assert code == 0 and (tmp_path / "out" / "video.gif").is_file()  # decoded by the folder's 48-channel VAE
    assert json.loads((tmp_path / "out" / "trace.json").read_text())["schedule"]
