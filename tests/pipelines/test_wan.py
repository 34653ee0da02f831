"""Wan pipeline: `generate` on Wan engines (trace, CFG in one call or two, decoding, prompts through UMT5)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler

from ddit_export.cli import main
from ddit_export.pipelines.registry import generate, make_conditioning
from ddit_export.pipelines.wan import WAN_UNIPC, cfg_layout
from ddit_export.runtime.backends import get_backend
from ddit_export.runtime.runner import schedule_config

pytestmark = pytest.mark.usefixtures("torch_single_thread")

STEPS = 6
HUGE_TAU = 1e9  # every decision after warm-up picks the coarsest size
SHAPE = (1, 16, 2, 12, 20)  # 5 frames of 96x160
DYNAMIC = [2, 2, 2, 8, 8, 8]


@pytest.fixture(scope="module")
def backends(tiny_wan_engines, tiny_wan_cfg_engines):
    loaded = {"torch": get_backend("torch", tiny_wan_engines), "torch-cfg": get_backend("torch", tiny_wan_cfg_engines)}
    yield loaded
    for backend in loaded.values():
        backend.close()


@pytest.fixture(scope="module")
def cond(tiny_wan_engines):
    return make_conditioning(json.loads((tiny_wan_engines / "manifest.json").read_text()), "a red bicycle", 5.0)


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
