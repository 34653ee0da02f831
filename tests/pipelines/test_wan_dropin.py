"""The stock diffusers WanPipeline driving DDiT engines through the drop-in transformer (CFG as two passes)."""

from __future__ import annotations

import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline

from ddit_export.pipelines.registry import generate, make_conditioning
from ddit_export.pipelines.wan import WAN_UNIPC
from ddit_export.pipelines.wan_dropin import DDiTWanTransformer
from ddit_export.runtime.backends import get_backend
from ddit_export.runtime.runner import schedule_config

pytestmark = pytest.mark.usefixtures("torch_single_thread")

STEPS = 6
HUGE_TAU = 1e9  # every decision after warm-up picks the coarsest size
SHAPE = (1, 16, 2, 12, 20)  # 5 frames of 96x160
DYNAMIC = [2, 2, 2, 8, 8, 8]


@pytest.fixture(scope="module")
def backends(tiny_wan_engines, tiny_wan_cfg_engines):
    loaded = {"onnx": get_backend("onnx", tiny_wan_engines), "torch": get_backend("torch", tiny_wan_engines),
              "torch-cfg": get_backend("torch", tiny_wan_cfg_engines)}
    yield loaded
    for backend in loaded.values():
        backend.close()


@pytest.fixture(scope="module")
def cond(backends):
    return make_conditioning(backends["onnx"].manifest, "a red bicycle", 5.0)


@pytest.fixture
def pipe(backends, tiny_wan_vae):
    scheduler = UniPCMultistepScheduler(**WAN_UNIPC)  # Wan 2.1's shipped sampler
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=tiny_wan_vae, scheduler=scheduler)
    pipe.transformer = DDiTWanTransformer(backends["onnx"], schedule_config(backends["onnx"], tau=HUGE_TAU))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(pipe, cond, **kwargs):
    args = {"height": 96, "width": 160, "num_frames": 5, "num_inference_steps": STEPS, "max_sequence_length": 8,
            "guidance_scale": 5.0, "generator": torch.Generator().manual_seed(0), "output_type": "latent",
            "prompt_embeds": cond.encoder_hidden_states, "negative_prompt_embeds": cond.negative_encoder_hidden_states}
    return pipe(**{**args, **kwargs}).frames


# -- the drop-in under the stock WanPipeline ------------------------------------------------------------
def test_stock_pipeline_runs_end_to_end_with_one_decision_per_cfg_pair(pipe, cond):
    video = call(pipe, cond, output_type="np")
    assert video.shape == (1, 5, 96, 160, 3)
    dropin = pipe.transformer
    assert dropin.trace.schedule == DYNAMIC  # warm-up, then the scheduler's decisions
    assert [s.stats is None for s in dropin.trace.steps] == [True] * 3 + [False] * 3
    assert [s.engine_calls for s in dropin.trace.steps] == [2] * STEPS  # cond + uncond share the step
    assert dropin.runner.scheduler.observed == STEPS  # the uncond pass adds no latent


def test_pipeline_matches_the_engine_sampling_loop_bitwise(pipe, cond, backends):
    latent = call(pipe, cond)
    ref = generate(backends["onnx"], cond, schedule_config(backends["onnx"], tau=HUGE_TAU), steps=STEPS, seed=0)
    assert ref.cfg == "two-calls" and ref.trace.schedule == pipe.transformer.trace.schedule
    assert torch.equal(latent, ref.latent)


def test_without_cfg_each_step_is_one_call_and_a_new_call_restarts_the_history(pipe, cond):
    call(pipe, cond, guidance_scale=1.0)
    first = pipe.transformer.trace
    assert [s.engine_calls for s in first.steps] == [1] * STEPS
    call(pipe, cond, num_inference_steps=4)
    assert len(first) == STEPS and pipe.transformer.trace.schedule == [2, 2, 2, 8]


def test_cfg_passes_driven_by_hand_share_one_history_entry(backends, cond):
    dropin = DDiTWanTransformer(backends["onnx"], schedule_config(backends["onnx"], tau=HUGE_TAU))
    hidden = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    for i in range(5):
        t = torch.tensor([999 - 150 * i]).expand(1)  # int64, as WanPipeline passes t.expand(B)
        (c,) = dropin(hidden, t, cond.encoder_hidden_states, return_dict=False)
        first = dropin.decision
        (u,) = dropin(hidden, t, cond.negative_encoder_hidden_states, return_dict=False)
        assert dropin.decision is first  # the second pass reuses the step's decision
        hidden = hidden - 0.1 * (u + 5 * (c - u))
    assert dropin.runner.scheduler.observed == 5 and dropin.trace.schedule == [2, 2, 2, 8, 8]
    # Without the pipeline's end-of-call hook: a timestep that does not decrease opens a new call.
    dropin(torch.randn(SHAPE), torch.tensor([999]), cond.encoder_hidden_states)
    assert len(dropin.trace) == 1


def test_drop_in_exposes_what_the_pipeline_reads(backends):
    dropin = DDiTWanTransformer(backends["onnx"])
    assert list(dropin.config.patch_size) == [1, 2, 2] and dropin.config.in_channels == 16
    assert dropin.dtype == torch.float32 and dropin.device == torch.device("cpu")
    with dropin.cache_context("uncond", step_index=0, sigma=1.0, num_inference_steps=STEPS):
        pass


def test_wrong_geometry_is_refused_clearly(pipe, cond, backends):
    with pytest.raises(ValueError, match=r"runs at 9 frames of 96x160, .* built for 5 frames .*num_frames=5"):
        call(pipe, cond, num_frames=9)
    with pytest.raises(ValueError, match=r"runs at 5 frames of 128x160, .*height=96, width=160"):
        call(pipe, cond, height=128)
    with pytest.raises(ValueError, match=r"max_sequence_length=8"):
        call(pipe, cond, prompt_embeds=cond.encoder_hidden_states[:, :4])
    with pytest.raises(ValueError, match=r"pipeline's batch is 2 .* built for batch 1"):
        call(pipe, cond, num_videos_per_prompt=2)
    with pytest.raises(ValueError, match="attention_kwargs"):
        call(pipe, cond, attention_kwargs={"scale": 0.5})
    pipe.transformer = DDiTWanTransformer(backends["torch-cfg"])  # batch-2 one-call CFG engines
    with pytest.raises(ValueError, match=r"batch is 1 .* for batch 2; .*export with --batch 1"):
        call(pipe, cond)
