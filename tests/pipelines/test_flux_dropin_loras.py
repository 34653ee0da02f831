"""The drop-in's `set_loras`: the stock FluxPipeline on DDiT engines with a LoRA gives what the stock pipeline
gives after `load_lora_weights` + `fuse_lora` on the stock transformer (every step at the base size)."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

from ddit_export.pipelines.flux import FLUX_SHIFT
from ddit_export.pipelines.flux_dropin import DDiTFluxTransformer
from ddit_export.pipelines.registry import make_conditioning
from ddit_export.runtime.backends import get_backend
from ddit_export.runtime.runner import schedule_config
from tests.runtime.loras.helpers import diffusers_fused, peft_lora

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _pipe(transformer):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, **FLUX_SHIFT)
    pipe = FluxPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=None)
    pipe.transformer = transformer
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_dropin_with_a_lora_equals_the_stock_pipeline_with_it_fused(tiny_flux_staged_engines, tmp_path):
    lora = peft_lora(tmp_path / "style.safetensors", seed=7)
    with get_backend("onnx", tiny_flux_staged_engines) as backend:
        cond = make_conditioning(backend.manifest, "a red bicycle")
        args = {"height": 128, "width": 128, "num_inference_steps": 4, "max_sequence_length": 8,
                "guidance_scale": 3.5, "prompt_embeds": cond.encoder_hidden_states,
                "pooled_prompt_embeds": cond.pooled_projections, "output_type": "latent"}
        dropin = DDiTFluxTransformer(backend, schedule_config(backend, static_patch=2))
        dropin.set_loras([(lora, 0.6)])
        assert [s.scale for s in dropin.loras] == [0.6]
        got = _pipe(dropin)(**args, generator=torch.Generator().manual_seed(0)).images
        dropin.set_loras([])
        plain = _pipe(dropin)(**args, generator=torch.Generator().manual_seed(0)).images
    want = _pipe(diffusers_fused([(lora, 0.6)]))(**args, generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
    assert (plain - want).abs().max() > 1e-2
