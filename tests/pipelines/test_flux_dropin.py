"""The stock diffusers FluxPipeline driving DDiT engines through the drop-in transformer."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

from ddit_export.families.flux import FLUX
from ddit_export.pipelines.flux import FLUX_SHIFT
from ddit_export.pipelines.flux_dropin import DDiTFluxTransformer
from ddit_export.pipelines.registry import generate, make_conditioning
from ddit_export.runtime.runner import schedule_config

pytestmark = pytest.mark.usefixtures("torch_single_thread")

STEPS = 8
HUGE_TAU = 1e9


@pytest.fixture(scope="module")
def backend(tiny_flux_backends):
    return tiny_flux_backends["onnx"]


@pytest.fixture
def pipe(backend, tiny_flux_vae):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, **FLUX_SHIFT)
    pipe = FluxPipeline(scheduler=scheduler, vae=tiny_flux_vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=None)
    pipe.transformer = DDiTFluxTransformer(backend, schedule_config(backend, tau=HUGE_TAU))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def embeds(backend):
    cond = make_conditioning(backend.manifest, "a red bicycle")
    neg = make_conditioning(backend.manifest, "blurry")
    return {"prompt_embeds": cond.encoder_hidden_states, "pooled_prompt_embeds": cond.pooled_projections,
            "negative_prompt_embeds": neg.encoder_hidden_states,
            "negative_pooled_prompt_embeds": neg.pooled_projections}


def call(pipe, embeds, cfg: float = 1.0, **kwargs):
    args = {
        "height": 128, "width": 128, "num_inference_steps": STEPS, "max_sequence_length": 8, "guidance_scale": 3.5,
        "generator": torch.Generator().manual_seed(0), "prompt_embeds": embeds["prompt_embeds"],
        "pooled_prompt_embeds": embeds["pooled_prompt_embeds"],
    }
    if cfg > 1:
        args.update(true_cfg_scale=cfg, negative_prompt_embeds=embeds["negative_prompt_embeds"],
                    negative_pooled_prompt_embeds=embeds["negative_pooled_prompt_embeds"])
    return pipe(**{**args, **kwargs})


def by_hand(backend) -> tuple[DDiTFluxTransformer, dict]:
    """A fresh drop-in and the keyword arguments FluxPipeline would pass besides latent and timestep."""
    dropin = DDiTFluxTransformer(backend, schedule_config(backend, tau=HUGE_TAU))
    cond = make_conditioning(backend.manifest, "a")
    kwargs = {
        "encoder_hidden_states": cond.encoder_hidden_states, "pooled_projections": cond.pooled_projections,
        "guidance": torch.tensor([3.5]), "img_ids": FLUX.image_ids(2, backend.latent_shape).float(),
        "txt_ids": torch.zeros(8, 3), "joint_attention_kwargs": {}, "return_dict": False,
    }
    return dropin, kwargs


def test_stock_pipeline_runs_end_to_end(pipe, embeds):
    image = call(pipe, embeds, output_type="pil").images[0]
    assert image.size == (128, 128)
    trace = pipe.transformer.trace
    assert trace.schedule == [2, 2, 2] + [8] * (STEPS - 3)  # warm-up, then the scheduler's decisions
    assert [s.stats is None for s in trace.steps] == [True] * 3 + [False] * (STEPS - 3)
    assert all(s.engine_calls == 1 for s in trace.steps)


def test_pipeline_matches_the_engine_sampling_loop(pipe, embeds, backend):
    packed = call(pipe, embeds, output_type="latent").images
    latent = FLUX.unpack(packed, 2, backend.latent_shape)
    cond = make_conditioning(backend.manifest, "a red bicycle")
    ref = generate(backend, cond, schedule_config(backend, tau=HUGE_TAU), steps=STEPS, seed=0)
    assert pipe.transformer.trace.schedule == ref.trace.schedule
    assert torch.equal(latent, ref.latent)


def test_true_cfg_passes_share_one_decision_per_step(pipe, embeds):
    call(pipe, embeds, cfg=2.0, output_type="np")
    dropin = pipe.transformer
    assert len(dropin.trace) == STEPS
    assert [s.engine_calls for s in dropin.trace.steps] == [2] * STEPS
    assert dropin.runner.scheduler.observed == STEPS  # the uncond pass adds no latent


def test_cfg_halves_driven_by_hand_share_one_history_entry(backend):
    dropin, kwargs = by_hand(backend)
    hidden = torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(0))
    decisions = []
    for i in range(6):
        t = torch.tensor([1.0 - i / 6])
        (cond_pred,) = dropin(hidden_states=hidden, timestep=t, **kwargs)
        first = dropin.decision
        (uncond_pred,) = dropin(hidden_states=hidden, timestep=t, **kwargs)
        assert dropin.decision is first  # the second pass reuses the step's decision
        decisions.append(first.patch_size)
        hidden = hidden - 0.1 * (2 * cond_pred - uncond_pred)
    assert dropin.runner.scheduler.observed == 6
    assert len(dropin.trace) == 6 and decisions == dropin.trace.schedule == [2, 2, 2, 8, 8, 8]


def test_a_new_pipeline_call_starts_a_new_history(pipe, embeds, backend):
    call(pipe, embeds, output_type="latent")
    first = pipe.transformer.trace
    call(pipe, embeds, output_type="latent", num_inference_steps=5)
    assert len(first) == STEPS and pipe.transformer.trace.schedule == [2, 2, 2, 8, 8]

    # Without the pipeline's end-of-call hook: a timestep that does not decrease opens a new call.
    dropin, kwargs = by_hand(backend)
    for t in (1.0, 0.8, 0.6, 0.4, 0.2, 1.0, 0.8):
        dropin(hidden_states=torch.randn(1, 64, 64), timestep=torch.tensor([t]), **kwargs)
    assert dropin.trace.schedule == [2, 2]
    dropin(hidden_states=torch.randn(1, 64, 64), timestep=torch.tensor([0.8]), **kwargs)  # same t, new latent
    assert len(dropin.trace) == 1


def test_drop_in_exposes_what_the_pipeline_reads(backend):
    dropin = DDiTFluxTransformer(backend)
    assert dropin.config.in_channels == 64 and dropin.config.guidance_embeds is True
    assert dropin.dtype == torch.float32 and dropin.device == torch.device("cpu")
    with dropin.cache_context("uncond"):
        pass


def test_wrong_geometry_is_refused_clearly(pipe, embeds):
    expected = r"runs at 64x256 pixels, the engines were built for 128x128 .*height=128, width=128"
    with pytest.raises(ValueError, match=expected):
        call(pipe, embeds, height=64, width=256)
    with pytest.raises(ValueError, match=r"runs at 256x256 pixels"):
        call(pipe, embeds, height=256, width=256)
    short = {**embeds, "prompt_embeds": embeds["prompt_embeds"][:, :4]}
    with pytest.raises(ValueError, match="max_sequence_length=8"):
        call(pipe, short, max_sequence_length=4)
    with pytest.raises(ValueError, match="joint_attention_kwargs"):
        call(pipe, embeds, joint_attention_kwargs={"scale": 0.5})


# -- resolution buckets ------------------------------------------------------------------------------
def _stock_transformer(folder):
    """The folder's model as the untouched diffusers transformer (base weights, no DDiT module)."""
    from ddit_export.artifacts.manifest import read_manifest
    from ddit_export.ddit.merge import merged_transformer
    from ddit_export.runtime.backends.torch_eager import load_manifest_model

    return merged_transformer(load_manifest_model(read_manifest(folder)), 2)


def test_the_drop_in_equals_stock_at_the_static_base_at_every_bucket(tiny_flux_bucket_engines, tiny_flux_vae):
    from ddit_export.runtime.backends import get_backend
    from tests.conftest import TINY_BUCKETS

    with get_backend("onnx", tiny_flux_bucket_engines) as backend:
        _equal_to_stock_at_every_bucket(tiny_flux_bucket_engines, tiny_flux_vae, backend, TINY_BUCKETS)


def _equal_to_stock_at_every_bucket(folder, vae, backend, buckets):
    dropin = DDiTFluxTransformer(backend, schedule_config(backend, static_patch=2))
    try:
        _compare_at_every_bucket(folder, vae, dropin, buckets)
    finally:
        dropin.close()
    assert dropin.backend is backend and list(dropin._bucket_backends.values()) == [backend]


def _compare_at_every_bucket(folder, vae, dropin, buckets):
    stock = _stock_transformer(folder)
    embeds = make_conditioning(dropin.backend.manifest, "a red bicycle")
    for height, width in [*buckets, buckets[0]]:  # and back: the first bucket's engines are kept
        latents = {}
        for name, transformer in (("stock", stock), ("drop-in", dropin)):
            pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True,
                                                                          **FLUX_SHIFT),
                                vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                                tokenizer_2=None, transformer=None)
            pipe.transformer = transformer
            pipe.set_progress_bar_config(disable=True)
            latents[name] = pipe(height=height, width=width, num_inference_steps=4, max_sequence_length=8,
                                 guidance_scale=3.5, generator=torch.Generator().manual_seed(0),
                                 prompt_embeds=embeds.encoder_hidden_states,
                                 pooled_prompt_embeds=embeds.pooled_projections, output_type="latent").images
        assert dropin.backend.manifest.bucket.name == f"{height}x{width}"
        assert dropin.trace.schedule == [2] * 4
        assert latents["stock"].shape == latents["drop-in"].shape
        assert (latents["stock"] - latents["drop-in"]).abs().max() < 1e-4, (height, width)


def test_a_resolution_without_a_bucket_is_refused_listing_them(tiny_flux_bucket_engines, tiny_flux_vae):
    from ddit_export.runtime.backends import get_backend

    with get_backend("onnx", tiny_flux_bucket_engines) as backend:
        _refused_listing_the_buckets(tiny_flux_vae, backend)


def _refused_listing_the_buckets(tiny_flux_vae, backend):
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, **FLUX_SHIFT),
                        vae=tiny_flux_vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                        transformer=None)
    pipe.transformer = DDiTFluxTransformer(backend)
    embeds = make_conditioning(backend.manifest, "a")
    with pytest.raises(ValueError, match=r"runs at 96x48 pixels.*resolution buckets are 64x64, 48x96\)$"):
        pipe(height=96, width=48, num_inference_steps=2, max_sequence_length=8,
             prompt_embeds=embeds.encoder_hidden_states, pooled_prompt_embeds=embeds.pooled_projections,
             output_type="latent")
