"""`ddit-export generate`: outputs, their exact schema, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ddit_export.cli import main

pytestmark = pytest.mark.usefixtures("torch_single_thread")

STEPS = 6


def generate(engines, out, *extra) -> int:
    return main(["generate", str(engines), "--steps", str(STEPS), "--out", str(out), *extra])


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_writes_trace_and_trajectory_with_the_exact_schema(tiny_flux_engines, tmp_path, capsys, backend):
    out, npz = tmp_path / "out", tmp_path / "traj.npz"
    assert generate(tiny_flux_engines, out, "--backend", backend, "--tau", "1e9", "--save-trajectory", str(npz)) == 0

    trace = json.loads((out / "trace.json").read_text())
    assert isinstance(trace, dict) and len(trace["steps"]) == STEPS
    assert trace["backend"] == backend
    for i, step in enumerate(trace["steps"]):
        assert type(step["patch_size"]) is int and type(step["seconds"]) is float
        if i < 3:
            assert step["stats"] is None  # warm-up
        else:
            assert set(step["stats"]) == {"4", "8"}
            assert all(type(v) is float for v in step["stats"].values())
    assert [s["patch_size"] for s in trace["steps"]] == [2, 2, 2, 8, 8, 8]
    assert trace["settle_steps"] == 0  # the paper's rule unless asked

    latents = np.load(npz)["latents"]
    assert latents.shape == (STEPS + 1, 1, 16, 16, 16)
    final = np.load(out / "latent.npy")  # no VAE next to the tiny model
    assert np.array_equal(latents[-1], final)
    printed = capsys.readouterr().out
    assert "2 2 2 8 8 8" in printed and "synthetic" in printed and "scheduler" in printed


def test_tau_zero_equals_static_base_bitwise(tiny_flux_engines, tmp_path):
    assert generate(tiny_flux_engines, tmp_path / "dyn", "--tau", "0") == 0
    assert generate(tiny_flux_engines, tmp_path / "static", "--static", "2") == 0
    assert np.array_equal(np.load(tmp_path / "dyn" / "latent.npy"), np.load(tmp_path / "static" / "latent.npy"))
    static = json.loads((tmp_path / "static" / "trace.json").read_text())["steps"]
    assert [s["stats"] for s in static] == [None] * STEPS


def test_writes_an_image_when_the_model_has_a_vae(tiny_flux_engines, tiny_flux_vae, tmp_path):
    from PIL import Image

    engines, model = tmp_path / "engines", tmp_path / "pipeline"
    shutil.copytree(tiny_flux_engines, engines)
    tiny_flux_vae.save_pretrained(model / "vae")
    manifest = json.loads((engines / "manifest.json").read_text())
    manifest["model"]["id"] = str(model)  # the onnx backend never loads the transformer itself
    (engines / "manifest.json").write_text(json.dumps(manifest))
    assert generate(engines, tmp_path / "out") == 0
    assert Image.open(tmp_path / "out" / "image.png").size == (128, 128)
    assert not (tmp_path / "out" / "latent.npy").exists()


def test_bad_input_is_one_line_and_exit_2(tiny_flux_engines, tmp_path, cli):
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_flux_engines, tampered)
    with open(tampered / "onnx" / "p8.onnx", "r+b") as fh:
        fh.write(b"X")
    cases = [
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path)], "has no manifest.json"),
        ([str(tiny_flux_engines), "--backend", "tvm"], "unknown backend 'tvm'; available: aoti, onnx"),
        ([str(tiny_flux_engines), "--backend", "aoti"], "has no AOTInductor packages"),
        ([str(tiny_flux_engines), "--static", "16"], "--static 16 is not a patch size of these engines"),
        ([str(tiny_flux_engines), "--warmup-patch", "3"], "--warmup-patch 3 is not a patch size"),
        ([str(tiny_flux_engines), "--steps", "0"], "argument --steps: must be an integer from 1 to 10000"),
        ([str(tiny_flux_engines), "--rho", "40"], "argument --rho: must be a finite number > 0 and < 1"),
        ([str(tiny_flux_engines), "--tau", "-1"], "argument --tau: must be a finite number >= 0"),
        ([str(tiny_flux_engines), "--settle-steps", "-1"], "argument --settle-steps: must be an integer at least 0"),
        ([str(tiny_flux_engines), "--sizes", "4,8"], "the scheduler can pick only sizes the engines have ([2, 4, 8])"),
        ([str(tiny_flux_engines), "--sizes", "2,16"], "the scheduler can pick only sizes the engines have"),
        ([str(tampered)], "p8.onnx does not match its manifest"),
    ]
    for args, message in cases:  # numbers are refused by argparse (SystemExit), the rest by the command
        cli.refuses("generate", *args, "--out", tmp_path / "o", naming=(message,))
    assert not (tmp_path / "o").exists()


def tiny_text_encoders(root):
    """A FluxPipeline folder with random tiny CLIP + T5 encoders and a word-level tokenizer."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words_in = ["a", "red", "fox", "cat"]
    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, "<s>": 3, **{w: i + 4 for i, w in enumerate(words_in)}}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    for sub, length in (("tokenizer", 77), ("tokenizer_2", 512)):
        PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                                bos_token="<s>", model_max_length=length).save_pretrained(root / sub)
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, projection_dim=16, bos_token_id=3, eos_token_id=2,
                                 pad_token_id=0)).save_pretrained(root / "text_encoder")
    T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=1,
                            num_heads=2)).save_pretrained(root / "text_encoder_2")
    FlowMatchEulerDiscreteScheduler().save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "tokenizer_2": ["transformers", "PreTrainedTokenizerFast"], "transformer": [None, None], "vae": [None, None],
    }))
    return root


def test_prompt_goes_through_the_pipelines_text_encoders(tiny_flux_engines, tmp_path, capsys):
    from ddit_export.pipelines.registry import make_conditioning

    model = tiny_text_encoders(tmp_path / "pipeline")
    engines = tmp_path / "engines"
    shutil.copytree(tiny_flux_engines, engines)
    manifest = json.loads((engines / "manifest.json").read_text())
    manifest["model"]["id"] = str(model)
    (engines / "manifest.json").write_text(json.dumps(manifest))

    fox, cat = (make_conditioning(manifest, p) for p in ("a red fox", "a cat"))
    assert fox.source == f"text encoders of {model}" and not fox.synthetic
    assert fox.encoder_hidden_states.shape == (1, 8, 32) and fox.pooled_projections.shape == (1, 16)
    assert fox.guidance == 3.5
    assert not torch.equal(fox.encoder_hidden_states, cat.encoder_hidden_states)
    assert generate(engines, tmp_path / "out", "--prompt", "a red fox") == 0
    assert "text encoders of" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only torch")
def test_cuda_device_without_cuda_is_bad_input(tiny_flux_engines, tmp_path, capsys):
    assert generate(tiny_flux_engines, tmp_path / "o", "--device", "cuda") == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_settle_steps_reach_the_scheduler_and_the_trace(tiny_flux_engines, tmp_path):
    assert generate(tiny_flux_engines, tmp_path / "s", "--tau", "1e9", "--settle-steps", "2") == 0
    trace = json.loads((tmp_path / "s" / "trace.json").read_text())
    assert trace["settle_steps"] == 2
    assert [s["patch_size"] for s in trace["steps"]] == [2, 2, 2, 8, 8, 8]  # tau 1e9: nothing switches back


def test_sizes_limit_what_the_scheduler_picks(tiny_flux_engines, tmp_path):
    assert generate(tiny_flux_engines, tmp_path / "s", "--tau", "1e9", "--sizes", "2,4") == 0
    trace = json.loads((tmp_path / "s" / "trace.json").read_text())
    assert trace["patch_sizes"] == [2, 4]
    assert [s["patch_size"] for s in trace["steps"]] == [2, 2, 2, 4, 4, 4]  # 8 would win without --sizes


def test_progress_without_a_terminal_is_plain_status_lines(tiny_flux_engines, tmp_path, capsys):
    assert generate(tiny_flux_engines, tmp_path / "out", "--tau", "1e9") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sampling: ")]
    # one line per tenth of the work at most (6 steps: every step), each with the step's patch size
    assert len(lines) == STEPS and lines[-1].startswith(f"sampling: {STEPS}/{STEPS} steps (100%), p8")
    assert lines[3].startswith(f"sampling: 4/{STEPS} steps (66%), p8") and "step/s, ETA" in lines[3]
    assert "\x1b[" not in "".join(lines)  # no terminal control codes in logs
