"""Wan runtime: the stock WanPipeline on the drop-in, `generate` on Wan engines, and CFG in one or two calls."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline

from ddit_export.cli import main
from ddit_export.pipelines.registry import generate, make_conditioning
from ddit_export.pipelines.wan import WAN_UNIPC, cfg_layout
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


# -- classifier-free guidance in one call or two ------------------------------------------------------
def test_cfg_layout_reads_an_even_engine_batch_as_cond_and_uncond_halves():
    assert cfg_layout(2, 5.0).mode == "batched" and cfg_layout(2, 5.0).video_batch == 1
    assert cfg_layout(1, 5.0).mode == "two-calls" and cfg_layout(2, 5.0, batched=False).video_batch == 2
    assert cfg_layout(2, 1.0).mode == "off" and cfg_layout(2, 1.0).video_batch == 2
    with pytest.raises(ValueError, match="engine batch of 2 x videos"):
        cfg_layout(3, 5.0, batched=True)


def test_batch2_cfg_engine_equals_two_batch1_calls(backends, cond):
    b1, b2 = backends["torch"], backends["torch-cfg"]
    sequential = generate(b1, cond, schedule_config(b1, tau=HUGE_TAU), steps=STEPS, seed=0)
    batched = generate(b2, cond, schedule_config(b2, tau=HUGE_TAU), steps=STEPS, seed=0)
    assert (sequential.cfg, batched.cfg) == ("two-calls", "batched")
    assert [s.engine_calls for s in batched.trace.steps] == [1] * STEPS
    assert [s.engine_calls for s in sequential.trace.steps] == [2] * STEPS
    assert batched.trace.schedule == sequential.trace.schedule == DYNAMIC
    assert batched.latent.shape == SHAPE
    torch.testing.assert_close(batched.latent, sequential.latent, rtol=1e-5, atol=1e-5)  # fp32 batching rounding


# -- `ddit-export generate` on Wan engines --------------------------------------------------------------
def run_generate(engines, out, *extra) -> int:
    return main(["generate", str(engines), "--steps", str(STEPS), "--out", str(out), *extra])


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_generate_writes_trace_and_trajectory(tiny_wan_engines, tmp_path, capsys, backend):
    out, npz = tmp_path / "out", tmp_path / "traj.npz"
    code = run_generate(tiny_wan_engines, out, "--backend", backend, "--tau", "1e9", "--save-trajectory", str(npz))
    assert code == 0
    trace = json.loads((out / "trace.json").read_text())
    assert trace["backend"] == backend and trace["guidance_scale"] == 5.0 and trace["cfg"] == "two-calls"
    assert [s["patch_size"] for s in trace["steps"]] == DYNAMIC
    assert [s["stats"] is None for s in trace["steps"]] == [True] * 3 + [False] * 3
    assert all(set(s["stats"]) == {"8"} for s in trace["steps"][3:])
    assert [s["engine_calls"] for s in trace["steps"]] == [2] * STEPS
    assert trace["timesteps"][0] == 999.0  # the 0..1000 scale WanPipeline passes
    latents = np.load(npz)["latents"]
    assert latents.shape == (STEPS + 1, *SHAPE)
    assert np.array_equal(latents[-1], np.load(out / "latent.npy"))
    assert "2 2 2 8 8 8" in capsys.readouterr().out


def test_tau_zero_equals_static_base_bitwise(tiny_wan_engines, tmp_path):
    assert run_generate(tiny_wan_engines, tmp_path / "dyn", "--tau", "0", "--guidance", "1") == 0
    assert run_generate(tiny_wan_engines, tmp_path / "static", "--static", "2", "--guidance", "1") == 0
    assert np.array_equal(np.load(tmp_path / "dyn" / "latent.npy"), np.load(tmp_path / "static" / "latent.npy"))
    dyn, static = (json.loads((tmp_path / d / "trace.json").read_text()) for d in ("dyn", "static"))
    assert dyn["schedule"] == static["schedule"] == [2] * STEPS and dyn["cfg"] == "off"
    assert [s["stats"] for s in static["steps"]] == [None] * STEPS


def test_generate_runs_cfg_in_one_call_on_a_batch2_engine(tiny_wan_cfg_engines, tmp_path):
    assert run_generate(tiny_wan_cfg_engines, tmp_path / "out", "--backend", "torch", "--tau", "1e9") == 0
    trace = json.loads((tmp_path / "out" / "trace.json").read_text())
    assert trace["cfg"] == "batched" and [s["engine_calls"] for s in trace["steps"]] == [1] * STEPS
    assert np.load(tmp_path / "out" / "latent.npy").shape == SHAPE  # one video, not two


def test_generate_writes_a_gif_when_the_model_has_a_vae(tiny_wan_engines, tiny_wan_vae, tmp_path):
    from PIL import Image

    engines, model = tmp_path / "engines", tmp_path / "pipeline"
    shutil.copytree(tiny_wan_engines, engines)
    tiny_wan_vae.save_pretrained(model / "vae")
    manifest = json.loads((engines / "manifest.json").read_text())
    manifest["model"]["id"] = str(model)  # the onnx backend never loads the transformer itself
    (engines / "manifest.json").write_text(json.dumps(manifest))
    assert run_generate(engines, tmp_path / "out", "--guidance", "1") == 0
    gif = Image.open(tmp_path / "out" / "video.gif")
    assert gif.size == (160, 96) and gif.n_frames == 5
    assert (tmp_path / "out" / "latent.npy").is_file()


def test_bad_guidance_is_one_line_and_exit_2(tiny_wan_engines, tmp_path, capsys):
    assert run_generate(tiny_wan_engines, tmp_path / "o", "--guidance", "0") == 2
    err = capsys.readouterr().err
    assert "--guidance is Wan's CFG scale" in err and len(err.strip().splitlines()) == 1


def tiny_wan_text_side(root):
    """A WanPipeline folder with a random tiny UMT5 encoder, a word-level tokenizer and Wan's scheduler."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(["a", "red", "fox", "blurry"])}}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                            model_max_length=512).save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    UMT5EncoderModel(UMT5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                num_heads=2)).save_pretrained(root / "text_encoder")  # d_model = tiny Wan's text_dim
    UniPCMultistepScheduler(**{**WAN_UNIPC, "flow_shift": 5.0}).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline", "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": [None, None], "vae": [None, None],
    }))
    return root


def test_prompts_go_through_the_pipelines_umt5_and_its_scheduler(tiny_wan_engines, tmp_path, capsys):
    from ddit_export.pipelines.wan import wan_sampler

    model = tiny_wan_text_side(tmp_path / "pipeline")
    manifest = json.loads((tiny_wan_engines / "manifest.json").read_text())
    manifest["model"]["id"] = str(model)
    fox = make_conditioning(manifest, "a red fox", negative_prompt="blurry")
    assert fox.source == f"text encoder of {model}" and fox.guidance == 5.0
    assert fox.encoder_hidden_states.shape == fox.negative_encoder_hidden_states.shape == (1, 8, 32)
    assert not torch.equal(fox.encoder_hidden_states, fox.negative_encoder_hidden_states)
    assert make_conditioning(manifest, "a red fox", 1.0).negative_encoder_hidden_states is None  # no CFG, no negative
    assert wan_sampler(manifest).config.flow_shift == 5.0  # the folder's scheduler, not the default

    engines = tmp_path / "engines"
    shutil.copytree(tiny_wan_engines, engines)
    (engines / "manifest.json").write_text(json.dumps(manifest))
    assert run_generate(engines, tmp_path / "out", "--prompt", "a red fox", "--negative-prompt", "blurry") == 0
    assert "text encoder of" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "trace.json").read_text())["negative_prompt"] == "blurry"
