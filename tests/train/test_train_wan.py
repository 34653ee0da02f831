"""`ddit-export train wan`: data-free distillation on tiny Wan's own trajectories, feeding the Wan exporter."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ddit_export import cli
from ddit_export.ddit.adapter_pack import read_meta
from ddit_export.ddit.merge import build_engine
from ddit_export.ddit.model import DDiTModel
from ddit_export.families.wan import WAN
from ddit_export.pipelines.base import initial_noise
from ddit_export.pipelines.wan import wan_sampler
from ddit_export.train import TrainConfig, collect_trajectories
from ddit_export.train.prompts import synthetic_conditions

GEOMETRY = dict(frames=5, height=96, width=160, text_len=8)  # latent 1 x 16 x 2 x 12 x 20; 8 pads 12 -> 16
LATENT = WAN.latent_shape(1, 96, 160, 5)
TINY = ["wan", "--model", "tiny", "--frames", "5", "--height", "96", "--width", "160", "--text-len", "8",
        "--teacher-steps", "3", "--batch-size", "2", "--lora-rank", "4", "--lr", "1e-3", "--dtype", "fp32",
        "--checkpoint-every", "0"]
PROMPTS = "a red fox in snow\na lighthouse at dusk\n"


def train_cli(argv: list[str]) -> int:
    return cli.main(["train", *argv])


@pytest.fixture()
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(PROMPTS)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 30-step run through the CLI (sizes 4 and 8): its output folder."""
    folder = tmp_path_factory.mktemp("train_wan")
    (folder / "prompts.txt").write_text(PROMPTS)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = TINY + ["--patch-sizes", "2,4,8", "--prompts", str(folder / "prompts.txt"), "--steps", "30"]
        assert train_cli(argv + ["--out", str(folder / "out")]) == 0
    finally:
        torch.set_num_threads(before)
    return folder / "out"


def conditioning(seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(encoder_hidden_states=torch.randn(1, 8, 32, generator=g), timestep=torch.tensor([600.0]))


def test_distillation_loss_decreases(trained):
    log = json.loads((trained / "train_log.json").read_text())
    assert log["samples"] == 2 * 3 and log["config"]["frames"] == 5 and log["config"]["guidance"] == 1.0
    for size in ("4", "8"):
        losses = [e["loss_per_size"][size] for e in log["log"]]
        assert len(losses) == 30 and all(np.isfinite(losses))
        first, last = np.mean(losses[:5]), np.mean(losses[-5:])
        assert last < 0.5 * first, f"p{size}: loss {first:.4f} -> {last:.4f} did not halve"


def test_the_pack_loads_into_the_wan_exporter(trained, torch_single_thread):
    """The export's own load step (pack check, `adapters.trained`) and merge; ONNX tracing is test_wan's."""
    from ddit_export.ddit.loading import load_ddit_model
    from ddit_export.export.request import ExportRequest

    meta = read_meta(trained)
    assert (meta.family, meta.base_model, meta.patch_sizes) == ("wan", "tiny", [4, 8])
    req = ExportRequest(family="wan", model="tiny", adapters=str(trained), patch_sizes=(2, 4), dtype="fp32",
                        **GEOMETRY)
    loaded = load_ddit_model(req.family_obj, req.model, req.patch_sizes, req.adapters)
    model, adapters = loaded.model, loaded.adapters
    assert adapters["trained"] is True
    untrained = DDiTModel(WAN, WAN.tiny(), [2, 4], lora_rank=4)
    latent, cond = torch.randn(LATENT, generator=torch.Generator().manual_seed(0)), conditioning()
    with torch.no_grad():
        engines = {p: build_engine(model, p, LATENT, 8)(latent, **cond) for p in (2, 4)}
        assert torch.equal(engines[2], untrained(latent, 2, **cond))  # the base path is the original model
        assert torch.allclose(engines[4], model(latent, 4, **cond), atol=1e-5)  # merged LoRA = eager adapter
        assert not torch.allclose(engines[4], untrained(latent, 4, **cond), atol=1e-3)


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path, prompts, torch_single_thread):
    args = TINY + ["--patch-sizes", "2,4", "--prompts", str(prompts)]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_cli(args + ["--steps", "4", "--out", str(straight)]) == 0
    assert train_cli(args + ["--steps", "2", "--checkpoint-every", "2", "--out", str(split)]) == 0
    assert train_cli(args + ["--steps", "4", "--checkpoint-every", "2", "--resume", "--out", str(split)]) == 0
    a, b = load_file(str(straight / "adapters.safetensors")), load_file(str(split / "adapters.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads((d / "train_log.json").read_text()) for d in (straight, split)]
    assert [e["loss"] for e in logs[0]["log"]] == [e["loss"] for e in logs[1]["log"]]
    assert logs[1]["resumed_from"] == 2


def test_teacher_trajectories_are_wans_sampling_loop(torch_single_thread):
    """UniPC, fp32 sampler latent, the sampler's 0..1000 timesteps in fp32, noise seed + prompt."""
    model = DDiTModel(WAN, WAN.tiny(), [2, 4], lora_rank=4)
    conditions = synthetic_conditions(["one", "two"], WAN, model.config, text_len=8)
    samples = collect_trajectories(model, conditions, LATENT, steps=3, seed=5, guidance=None, batch_size=2)
    assert samples.latents.shape == (6, *LATENT[1:]) and samples.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert samples.latents.dtype == samples.timesteps.dtype == torch.float32
    sampler = wan_sampler()
    sampler.set_timesteps(3)
    with torch.no_grad():  # the reference: WanPipeline's loop, written out
        z = initial_noise(LATENT, 6, "cpu", torch.float32)
        for i, t in enumerate(sampler.timesteps):
            assert samples.timesteps[3 + i] == float(t) and torch.allclose(samples.latents[3 + i], z, atol=1e-5)
            pred = model(z, 2, encoder_hidden_states=conditions["encoder_hidden_states"][1:], timestep=t[None].float())
            z = sampler.step(pred, t, z, return_dict=False)[0]
    guided = collect_trajectories(model, conditions, LATENT, steps=3, seed=5, guidance=None, batch_size=2, cfg=5.0,
                                  negative=synthetic_conditions([""], WAN, model.config, text_len=8))
    assert torch.equal(guided.latents[0], samples.latents[0]) and not torch.allclose(guided.latents[2],
                                                                                     samples.latents[2])


def test_cfg_trajectories_use_the_runtimes_negative_prompt(tmp_path, prompts, torch_single_thread):
    from ddit_export.train.sources import trajectory_samples

    config = TrainConfig(out=str(tmp_path / "out"), family="wan", model="tiny", patch_sizes=(2, 4),
                         prompts=str(prompts), teacher_steps=2, guidance=5.0, dtype="fp32", **GEOMETRY)
    model = DDiTModel(WAN, WAN.tiny(), [2, 4], lora_rank=4)
    samples = trajectory_samples(config, model, "cpu")
    conditions = synthetic_conditions(["a red fox in snow", "a lighthouse at dusk"], WAN, model.config, text_len=8)
    expected = collect_trajectories(model, conditions, LATENT, steps=2, seed=0, guidance=None, cfg=5.0,
                                    negative=synthetic_conditions([""], WAN, model.config, text_len=8))
    assert "CFG 5.0" in samples.source and samples.conditions["encoder_hidden_states"].shape == (2, 8, 32)
    assert torch.equal(samples.latents, expected.latents)


def test_prompt_embeds_with_cfg_need_negative_embeddings(tmp_path, capsys, torch_single_thread):
    good, bare = tmp_path / "good.safetensors", tmp_path / "bare.safetensors"
    states = torch.randn(2, 5, 32)
    save_file({"encoder_hidden_states": states, "negative_encoder_hidden_states": torch.randn(1, 5, 32)}, str(good))
    save_file({"encoder_hidden_states": states}, str(bare))
    args = TINY + ["--patch-sizes", "2,4", "--teacher-steps", "2", "--steps", "1", "--guidance", "5"]
    assert train_cli(args + ["--prompt-embeds", str(good), "--out", str(tmp_path / "a")]) == 0
    assert "CFG 5.0" in json.loads((tmp_path / "a" / "train_log.json").read_text())["data"]
    capsys.readouterr()
    assert train_cli(args + ["--prompt-embeds", str(bare), "--out", str(tmp_path / "b")]) == 2
    assert "negative_encoder_hidden_states" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (TINY + ["--images", "."], "--images is for flux only"),
    (TINY[:3] + ["--frames", "6"] + TINY[5:], "--frames must be 4k+1"),
    (["flux", "--model", "tiny", "--height", "64", "--width", "64", "--frames", "5"], "--frames does not apply"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, prompts, capsys, argv, message):
    assert train_cli(argv + ["--prompts", str(prompts), "--steps", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "error:" in err and err.count("\n") == 0, err
