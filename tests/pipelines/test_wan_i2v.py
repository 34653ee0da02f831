"""Wan 2.1 image-to-video: engines exported from a tiny `WanImageToVideoPipeline` folder, against stock diffusers.

The reference side is stock diffusers only (the pipeline with its own transformer). Prompt embeddings
are passed in: diffusers 0.42's I2V `encode_prompt` needs `ftfy`, which this environment lacks.
"""

from __future__ import annotations

import pytest
import torch

from ddit_export.pipelines.wan_dropin import DDiTWanTransformer
from ddit_export.runtime.backends import get_backend
from ddit_export.runtime.runner import schedule_config
from tests.wan_variants import (
    FLF2V_CONFIG,
    I2V_CONFIG,
    VIDEO,
    export_pipeline,
    first_frame,
    i2v_pipeline,
    relative,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")
STEPS = 6
HUGE_TAU = 1e9  # after warm-up every decision picks the coarsest size


def exported(root, config):
    """The stock pipeline, its folder and ONNX engines for sizes 2 and 8 exported from that folder."""
    pipe = i2v_pipeline(config)
    backend = get_backend("onnx", export_pipeline(root, pipe, (2, 8), frames=5, height=96, width=160))
    return pipe, root, backend


@pytest.fixture(scope="module")
def i2v(tmp_path_factory):
    pipe, root, backend = exported(tmp_path_factory.mktemp("wan_i2v"), I2V_CONFIG)
    yield pipe, root, backend
    backend.close()


def embeds(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 8, 32, generator=g), torch.randn(1, 8, 32, generator=g)


def call(pipe, **kwargs):
    prompt, negative = embeds()
    args = dict(image=first_frame(), prompt_embeds=prompt, negative_prompt_embeds=negative, guidance_scale=5.0,
                num_inference_steps=STEPS, max_sequence_length=8, output_type="latent",
                generator=torch.Generator().manual_seed(0), **VIDEO)
    return pipe(**{**args, **kwargs}).frames


def test_the_engines_take_the_condition_on_the_grid_and_the_image_embeddings(i2v):
    _, _, backend = i2v
    inputs = {t.name: tuple(t.shape) for t in backend.manifest.io.inputs}
    assert inputs["latent"] == (1, 16, 2, 12, 20)
    assert inputs["condition_latent"] == (1, 20, 2, 12, 20)  # mask (4) + image latent (16), on the latent grid
    assert inputs["encoder_hidden_states_image"] == (1, 257, 16)  # CLIP tokens, the same at every size
    assert backend.manifest.model_config["in_channels"] == 36


def test_base_engine_equals_the_diffusers_forward(i2v):
    pipe, _, backend = i2v
    g = torch.Generator().manual_seed(3)
    latent, condition = torch.randn(1, 16, 2, 12, 20, generator=g), torch.randn(1, 20, 2, 12, 20, generator=g)
    text, image = torch.randn(1, 8, 32, generator=g), torch.randn(1, 257, 16, generator=g)
    t = torch.tensor([700.0])
    with torch.no_grad():
        ref = pipe.transformer(hidden_states=torch.cat([latent, condition], 1), timestep=t, encoder_hidden_states=text,
                               encoder_hidden_states_image=image, return_dict=False)[0]
    out = backend(2, latent, encoder_hidden_states=text, timestep=t, condition_latent=condition,
                  encoder_hidden_states_image=image)
    assert relative(out, ref) <= 1e-4
    coarse = backend(8, latent, encoder_hidden_states=text, timestep=t, condition_latent=condition,
                     encoder_hidden_states_image=image)
    assert coarse.shape == ref.shape and torch.isfinite(coarse).all()
    # the image embeddings reach the blocks at the coarse size too
    other = backend(8, latent, encoder_hidden_states=text, timestep=t, condition_latent=condition,
                    encoder_hidden_states_image=image + 1).clone()
    assert not torch.allclose(other, coarse)


def test_drop_in_at_the_static_base_equals_the_stock_pipeline(i2v):
    pipe, _, backend = i2v
    stock = call(pipe)
    real = pipe.transformer
    try:
        pipe.transformer = DDiTWanTransformer(backend, schedule_config(backend, static_patch=2))
        ours = call(pipe)
        assert pipe.transformer.trace.schedule == [2] * STEPS
    finally:
        pipe.transformer = real
    assert relative(ours, stock) <= 1e-4


def test_drop_in_runs_the_coarse_size_with_the_ddit_statistic(i2v):
    pipe, _, backend = i2v
    real = pipe.transformer
    try:
        pipe.transformer = DDiTWanTransformer(backend, schedule_config(backend, tau=HUGE_TAU))
        video = call(pipe)
        trace = pipe.transformer.trace
    finally:
        pipe.transformer = real
    assert video.shape == (1, 16, 2, 12, 20) and torch.isfinite(video).all()
    assert trace.schedule == [2, 2, 2, 8, 8, 8]  # warm-up, then the statistic's decisions on the 16 latent channels
    assert [s.engine_calls for s in trace.steps] == [2] * STEPS  # cond + uncond, one decision


def test_drop_in_refuses_missing_image_embeddings(i2v):
    _, _, backend = i2v
    dropin = DDiTWanTransformer(backend)
    with pytest.raises(ValueError, match="encoder_hidden_states_image"):
        dropin(torch.randn(1, 36, 2, 12, 20), torch.tensor([999]), embeds()[0])
    with pytest.raises(ValueError, match=r"B x 16 \+ 20 condition x F x h x w"):
        dropin(torch.randn(1, 16, 2, 12, 20), torch.tensor([999]), embeds()[0],
               encoder_hidden_states_image=torch.randn(1, 257, 16))


def test_generate_makes_the_image_inputs_like_the_stock_pipeline(i2v, tmp_path):
    from ddit_export.pipelines.registry import generate, make_conditioning

    pipe, root, backend = i2v
    picture = tmp_path / "first.png"
    first_frame().save(picture)
    cond = make_conditioning(backend.manifest, "a red fox", 5.0, negative_prompt="blurry", image=str(picture))
    assert cond.source == f"text encoder of {root / 'model'}; image {picture}"
    assert set(cond.grid_inputs) == {"condition_latent", "encoder_hidden_states_image"}
    ours = generate(backend, cond, schedule_config(backend, static_patch=2), steps=STEPS, seed=0).latent
    # the stock pipeline makes its own mask, image latent and CLIP embeddings from the same picture
    stock = call(pipe, prompt_embeds=cond.encoder_hidden_states,
                 negative_prompt_embeds=cond.negative_encoder_hidden_states)
    assert relative(ours, stock) <= 1e-4


def test_generate_command_with_image_writes_the_video_and_refuses_bad_image_flags(i2v, tmp_path, capsys):
    from ddit_export.cli import main

    _, root, _ = i2v
    picture = tmp_path / "first.png"
    first_frame().save(picture)
    engines = str(root / "engines")
    args = ["generate", engines, "--steps", "3", "--tau", "1e9"]
    assert main([*args, "--image", str(picture), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "video.gif").is_file()
    capsys.readouterr()
    for extra, naming in ((["--out", str(tmp_path / "o2")], "need --image"),
                          (["--image", str(picture), "--last-image", str(picture), "--out", str(tmp_path / "o3")],
                           "--last-image needs a first-last-frame model"),
                          (["--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o4")], "is not a file"),
                          (["--image", str(picture), "--mask", str(picture), "--out", str(tmp_path / "o5")],
                           "--mask does not apply")):
        assert main([*args, *extra]) != 0
        err = capsys.readouterr().err.strip()
        assert naming in err and len(err.splitlines()) == 1, err


def test_image_flags_are_refused_for_text_to_video_engines(tiny_wan_engines, tmp_path, capsys):
    from ddit_export.cli import main

    picture = tmp_path / "first.png"
    first_frame().save(picture)
    assert main(["generate", str(tiny_wan_engines), "--image", str(picture), "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err.strip()
    assert "does not apply to these text-to-video Wan engines" in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def flf2v(tmp_path_factory):
    """Wan 2.1 FLF2V (two images' CLIP embeddings, pos_embed_seq_len)."""
    pipe, root, backend = exported(tmp_path_factory.mktemp("wan_flf2v"), FLF2V_CONFIG)
    yield pipe, root, backend
    backend.close()


def test_first_last_frame_drop_in_and_generate_equal_the_stock_pipeline(flf2v, tmp_path):
    from ddit_export.pipelines.registry import generate, make_conditioning

    pipe, _, backend = flf2v
    first, last = tmp_path / "first.png", tmp_path / "last.png"
    first_frame().save(first)
    first_frame(seed=1).save(last)
    assert {t.name: tuple(t.shape) for t in backend.manifest.io.inputs}["encoder_hidden_states_image"] == (2, 257, 16)
    stock = call(pipe, last_image=first_frame(seed=1))
    real = pipe.transformer
    try:
        pipe.transformer = DDiTWanTransformer(backend, schedule_config(backend, static_patch=2))
        assert relative(call(pipe, last_image=first_frame(seed=1)), stock) <= 1e-4
        pipe.transformer = DDiTWanTransformer(backend, schedule_config(backend, tau=HUGE_TAU))
        assert torch.isfinite(call(pipe, last_image=first_frame(seed=1))).all()
        assert pipe.transformer.trace.schedule == [2, 2, 2, 8, 8, 8]
    finally:
        pipe.transformer = real
    prompt, negative = embeds()
    cond = make_conditioning(backend.manifest, "a red fox", 5.0, image=str(first), last_image=str(last))
    cond = type(cond)(prompt, None, 5.0, cond.source, negative, grid_inputs=cond.grid_inputs)  # call()'s prompts
    ours = generate(backend, cond, schedule_config(backend, static_patch=2), steps=STEPS, seed=0).latent
    assert relative(ours, stock) <= 1e-4


def test_the_torch_backend_rebuilds_the_image_to_video_engines(i2v):
    _, root, onnx = i2v
    g = torch.Generator().manual_seed(5)
    inputs = dict(encoder_hidden_states=torch.randn(1, 8, 32, generator=g), timestep=torch.tensor([420.0]),
                  condition_latent=torch.randn(1, 20, 2, 12, 20, generator=g),
                  encoder_hidden_states_image=torch.randn(1, 257, 16, generator=g))
    latent = torch.randn(1, 16, 2, 12, 20, generator=g)
    with get_backend("torch", root / "engines") as eager:
        for patch in (2, 8):
            want = onnx(patch, latent, **inputs).clone()
            assert relative(eager(patch, latent, **inputs), want) <= 1e-4
