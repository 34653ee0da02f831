"""`ddit-export train`: distillation that trains only DDiT, resumes exactly, feeds the exporter."""

import argparse
import importlib.util
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ddit_export.commands import train_cmd
from ddit_export.ddit.adapter_pack import read_meta
from ddit_export.ddit.model import DDiTModel
from ddit_export.families.flux import FLUX
from ddit_export.train import DistillationObjective, TrainConfig, collect_trajectories, freeze_for_distillation, train
from ddit_export.train.images import encode_image_folder
from ddit_export.train.prompts import synthetic_conditions

TINY = ["flux", "--model", "tiny", "--height", "64", "--width", "64", "--text-len", "8", "--teacher-steps", "3",
        "--batch-size", "2", "--lora-rank", "4", "--lr", "1e-3", "--dtype", "fp32", "--checkpoint-every", "0"]
LATENT = FLUX.latent_shape(1, 64, 64)  # 1 x 16 x 8 x 8
PROMPTS = "a red fox in snow\na lighthouse at dusk\n"


def quiet(_message):
    pass


def train_cli(argv: list[str]) -> int:
    """Through the real CLI when `train` is registered there, else through the command module alone."""
    from ddit_export import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "train" in sub.choices:
        return cli.main(["train", *argv])
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    return train_cmd.run(parser.parse_args(argv))


@pytest.fixture()
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(PROMPTS)
    return path


def tiny_config(out, prompts, **overrides) -> TrainConfig:
    kw = dict(out=str(out), model="tiny", prompts=str(prompts), height=64, width=64, text_len=8, teacher_steps=3,
              batch_size=2, lora_rank=4, lr=1e-3, dtype="fp32", checkpoint_every=0)
    return TrainConfig(**{**kw, **overrides})


def test_dtype_defaults_to_fp32_on_a_cpu_and_bf16_on_a_gpu(tmp_path, prompts):
    expected = "bf16" if torch.cuda.is_available() else "fp32"
    assert tiny_config(tmp_path / "run", prompts, dtype=None).dtype == expected
    assert tiny_config(tmp_path / "run", prompts, dtype="bf16").dtype == "bf16"  # an explicit choice stays
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    args = parser.parse_args(["flux", "--out", str(tmp_path / "run"), "--prompts", str(prompts)])
    assert args.dtype is None and train_cmd.config_from_args(args).dtype == expected  # TrainConfig decides


def tiny_conditioning(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(encoder_hidden_states=torch.randn(batch, 8, 32, generator=g),
                pooled_projections=torch.randn(batch, 16, generator=g),
                timestep=torch.rand(batch, generator=g), guidance=torch.full((batch,), 3.5))


# ---- the trained pack feeds the exporter -------------------------------------------------------

def test_cli_trains_a_pack_that_the_exporter_consumes(tmp_path, prompts, torch_single_thread):
    from ddit_export.export.build import export_engines
    from ddit_export.export.request import ExportRequest

    out = tmp_path / "adapters"
    assert train_cli(TINY + ["--patch-sizes", "2,4", "--prompts", str(prompts), "--steps", "3", "--out", str(out)]) == 0
    meta = read_meta(out)
    assert (meta.base_model, meta.patch_sizes, meta.lora_rank) == ("tiny", [4], 4)
    log = json.loads((out / "train_log.json").read_text())
    assert [e["step"] for e in log["log"]] == [1, 2, 3] and set(log["log"][0]["loss_per_size"]) == {"4"}
    assert log["samples"] == 2 * 3  # prompts x teacher steps
    manifest = export_engines(ExportRequest(model="tiny", adapters=str(out), patch_sizes=(2, 4), height=64, width=64,
                                            text_len=8, dtype="fp32", out=str(tmp_path / "engines")))
    assert manifest["adapters"]["trained"] is True
    assert all(e["validation"]["passed"] for e in manifest["engines"])


def test_init_adapters_load_through_the_one_loader_and_leave_the_config_alone(tmp_path, prompts, torch_single_thread):
    from ddit_export.ddit.adapter_pack import AdapterPackError, save_adapter_pack
    from ddit_export.train.distill import build_model

    source = DDiTModel(FLUX, FLUX.tiny(), [2, 4, 8], lora_rank=4)
    with torch.no_grad():
        for param in source.extra.parameters():
            param.add_(torch.randn_like(param))
    save_adapter_pack(source, tmp_path / "pack", base_model="tiny")
    config = tiny_config(tmp_path / "out", prompts, init_adapters=str(tmp_path / "pack"))
    before = dict(vars(config))
    loaded = build_model(config, "cpu")
    assert vars(config) == before  # what the load learned is in its result, not in the config
    assert loaded.latent_channels == 16 and loaded.adapters["trained"] and loaded.model.training
    want, got = source.extra.state_dict(), loaded.model.extra.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    with pytest.raises(AdapterPackError, match="adapter pack has LoRA rank 4 .* built with rank 8"):
        build_model(tiny_config(tmp_path / "out2", prompts, init_adapters=str(tmp_path / "pack"), lora_rank=8), "cpu")


# ---- resume --------------------------------------------------------------------------------------

def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path, prompts, torch_single_thread):
    args = TINY + ["--prompts", str(prompts)]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_cli(args + ["--steps", "6", "--out", str(straight)]) == 0
    assert train_cli(args + ["--steps", "3", "--checkpoint-every", "3", "--out", str(split)]) == 0
    assert (split / "checkpoints" / "step-3" / "adapters" / "adapters.safetensors").is_file()
    assert train_cli(args + ["--steps", "6", "--checkpoint-every", "3", "--resume", "--out", str(split)]) == 0
    a, b = load_file(str(straight / "adapters.safetensors")), load_file(str(split / "adapters.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads((d / "train_log.json").read_text()) for d in (straight, split)]
    assert [e["loss"] for e in logs[0]["log"]] == [e["loss"] for e in logs[1]["log"]]
    assert logs[1]["resumed_from"] == 3
    assert read_meta(split).patch_sizes == [4, 8]  # the pack still reads with checkpoints/ beside it
    assert not [p for p in split.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_cosine_schedule_resumes_on_the_same_curve(tmp_path, prompts, torch_single_thread):
    import shutil

    from ddit_export.train.optim import lr_factor

    factors = [lr_factor("cosine", k, 100) for k in range(1, 101)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))  # decays after the warm-up
    args = TINY + ["--prompts", str(prompts), "--steps", "6", "--lr-schedule", "cosine"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_cli(args + ["--out", str(straight)]) == 0
    assert train_cli(args + ["--checkpoint-every", "3", "--keep-checkpoints", "3", "--out", str(split)]) == 0
    shutil.rmtree(split / "checkpoints" / "step-6")  # as if the run had stopped after step 3
    assert train_cli(args + ["--checkpoint-every", "3", "--resume", "--out", str(split)]) == 0
    a, b = load_file(str(straight / "adapters.safetensors")), load_file(str(split / "adapters.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    constant = tmp_path / "constant"
    assert train_cli(TINY + ["--prompts", str(prompts), "--steps", "6", "--out", str(constant)]) == 0
    c = load_file(str(constant / "adapters.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the schedule really changed the updates


def test_resume_with_changed_settings_is_refused(tmp_path, prompts, capsys, torch_single_thread):
    args = TINY + ["--prompts", str(prompts), "--checkpoint-every", "2", "--out", str(tmp_path / "run")]
    assert train_cli(args + ["--steps", "2"]) == 0
    capsys.readouterr()
    assert train_cli(args + ["--steps", "4", "--resume", "--seed", "7"]) == 2
    assert "seed: 0 -> 7" in capsys.readouterr().err


# ---- what training changes -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    (folder / "prompts.txt").write_text(PROMPTS)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(tiny_config(folder / "out", folder / "prompts.txt", steps=40), status=quiet)
    finally:
        torch.set_num_threads(before)


def fresh_model():
    return DDiTModel(FLUX, FLUX.tiny(), [2, 4, 8], lora_rank=4)


def test_distillation_loss_decreases(trained):
    for size in ("4", "8"):
        losses = [e["loss_per_size"][size] for e in trained.log]
        assert len(losses) == 40 and all(np.isfinite(losses))
        first, last = np.mean(losses[:5]), np.mean(losses[-5:])
        assert last < 0.5 * first, f"p{size}: loss {first:.4f} -> {last:.4f} did not halve"


def test_base_path_is_bit_identical_after_training(trained):
    latent, cond = torch.randn(2, *LATENT[1:]), tiny_conditioning()
    with torch.no_grad():
        assert torch.equal(trained.model(latent, 2, **cond), fresh_model()(latent, 2, **cond))
        assert not torch.equal(trained.model(latent, 4, **cond), fresh_model()(latent, 4, **cond))


def test_only_ddit_modules_and_lora_change(trained):
    before, after = fresh_model().state_dict(), trained.model.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k].to(before[k].dtype))}
    trainable = {k for k in before if k.startswith("extra.") or ("lora_" in k and (".p4." in k or ".p8." in k))}
    assert changed <= trainable, f"frozen weights changed: {sorted(changed - trainable)[:3]}"
    for size in (4, 8):  # both sizes' modules and both sizes' LoRA moved
        assert any(k.startswith(f"extra.{size}.") for k in changed)
        assert any(f"lora_B.p{size}." in k for k in changed)


def test_a_size_only_gets_gradient_from_its_own_modules_and_lora():
    model = fresh_model()
    trainable = freeze_for_distillation(model, sizes=[4])
    objective = DistillationObjective(model, sizes=[4])
    losses = objective(torch.randn(LATENT), tiny_conditioning(batch=1))
    assert losses.shape == (1,)
    assert not objective.teacher(torch.randn(LATENT), tiny_conditioning(batch=1)).requires_grad
    losses.sum().backward()
    own = {id(p) for p in trainable}
    assert all(p.grad is not None for p in trainable) and all(p.grad.abs().sum() > 0 for p in trainable[:3])
    strays = [n for n, p in model.named_parameters() if p.grad is not None and id(p) not in own]
    assert not strays, f"parameters outside size 4 got gradient: {strays[:3]}"
    assert not any(".p8." in n for n, p in model.named_parameters() if p.grad is not None)


def test_a_teacher_with_trainable_weights_is_refused():
    model = fresh_model()
    freeze_for_distillation(model)
    model.transformer.proj_out.weight.requires_grad_(True)  # a base weight left trainable by mistake
    with pytest.raises(RuntimeError, match="not frozen"):
        DistillationObjective(model)(torch.randn(LATENT), tiny_conditioning(batch=1))


def test_gradient_checkpointing_gives_the_same_training(tmp_path, prompts, torch_single_thread):
    plain = train(tiny_config(tmp_path / "a", prompts, steps=2), status=quiet)
    ckpt = train(tiny_config(tmp_path / "b", prompts, steps=2, gradient_checkpointing=True), status=quiet)
    assert [e["loss"] for e in plain.log] == [e["loss"] for e in ckpt.log]
    a, b = plain.model.state_dict(), ckpt.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_backbone_trains_fp32_adapters(tmp_path, prompts, torch_single_thread):
    result = train(tiny_config(tmp_path / "bf16", prompts, steps=2, dtype="bf16"), status=quiet)
    assert all(np.isfinite(e["loss"]) for e in result.log)
    assert all(t.dtype == torch.float32 for t in load_file(str(tmp_path / "bf16" / "adapters.safetensors")).values())


# ---- data ----------------------------------------------------------------------------------------

def test_teacher_trajectories_give_steps_times_prompts_samples():
    model = fresh_model()
    conditions = synthetic_conditions(["one", "two", "three"], FLUX, model.config, text_len=8)
    samples = collect_trajectories(model, conditions, LATENT, steps=4, seed=5, guidance=3.5, batch_size=2)
    assert len(samples) == 12
    assert samples.latents.shape == (12, *LATENT[1:])
    assert samples.prompt_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert samples.conditions["encoder_hidden_states"].shape == (3, 8, 32)
    for prompt in range(3):
        t = samples.timesteps[samples.prompt_index == prompt]
        assert t[0] == 1.0 and (t > 0).all() and (t[1:] < t[:-1]).all(), t  # sigma, decreasing
        first = samples.latents[samples.prompt_index == prompt][0]
        noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(5 + prompt))
        assert torch.equal(first, noise[0])  # FluxPipeline's noise for seed + prompt
    item = samples.item(5)
    assert set(item) == {"latent", "timestep", "encoder_hidden_states", "pooled_projections"}


def test_prompt_embeddings_file_trains_and_a_wrong_width_is_refused(tmp_path, capsys, torch_single_thread):
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    save_file({"encoder_hidden_states": torch.randn(2, 5, 32), "pooled_projections": torch.randn(2, 16)}, str(good))
    save_file({"encoder_hidden_states": torch.randn(2, 5, 64), "pooled_projections": torch.randn(2, 16)}, str(bad))
    assert train_cli(TINY + ["--prompt-embeds", str(good), "--steps", "1", "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert train_cli(TINY + ["--prompt-embeds", str(bad), "--steps", "1", "--out", str(tmp_path / "b")]) == 2
    assert "encoder_hidden_states [N, T, 32]" in capsys.readouterr().err


def tiny_vae(folder):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4,
        scaling_factor=0.3611, shift_factor=0.1159,  # FLUX's values
    )
    vae.save_pretrained(folder)
    return vae


def write_images(folder):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in {"a": (64, 64), "b": (96, 64), "c": (70, 130)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    (folder / "a.txt").write_text("a caption\n")


def test_image_folder_is_encoded_normalised_and_trains(tmp_path, capsys, torch_single_thread):
    vae = tiny_vae(tmp_path / "vae")
    write_images(tmp_path / "images")
    data = encode_image_folder(tmp_path / "images", tmp_path / "vae", FLUX, 64, 64)
    assert data.latents.shape == (3, *LATENT[1:])
    assert data.prompts == ["a caption", "b.png", "c.png"] and data.captioned == [True, False, False]
    from ddit_export.train.images import load_rgb

    with torch.no_grad():
        mean = vae.encode(load_rgb(tmp_path / "images" / "a.png", 64, 64)[None]).latent_dist.mode()
    assert torch.allclose(data.latents[0], ((mean - 0.1159) * 0.3611)[0], atol=1e-6)
    out = tmp_path / "out"
    args = ["--images", str(tmp_path / "images"), "--vae", str(tmp_path / "vae"), "--steps", "2", "--out", str(out)]
    assert train_cli(TINY + args) == 0
    assert read_meta(out).patch_sizes == [4, 8]
    assert "3 image(s)" in json.loads((out / "train_log.json").read_text())["data"]


# ---- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--model", "no-such/model"], "not in the local Hugging Face cache"),
    (["--images", "/no/such/folder"], "is not a folder"),
    (["--patch-sizes", "2,16"], "do not fit in the 8x8 latent grid"),
    (["--patch-sizes", "2"], "nothing to train"),
    (["--resume"], "no checkpoint to continue from"),
    (["--optimizer", "prodigy"], "prodigyopt"),
    (["--steps", "0"], "argument --steps: must be an integer at least 1"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, prompts, capsys, args, message):
    if "prodigy" in args and importlib.util.find_spec("prodigyopt"):
        pytest.skip("prodigyopt is installed here")
    data = [] if "--images" in args else ["--prompts", str(prompts)]
    argv = TINY + ["--steps", "1", "--out", str(tmp_path / "out")] + data + args
    try:
        code = train_cli(argv)
    except SystemExit as refused:  # numbers are refused while parsing
        code = refused.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "error:" in err and err.count("\n") == 0, err
    assert not (tmp_path / "out" / "adapters.json").exists()


def test_a_used_out_needs_resume_or_overwrite(tmp_path, prompts, capsys, torch_single_thread):
    args = TINY + ["--prompts", str(prompts), "--steps", "1", "--out", str(tmp_path / "out")]
    assert train_cli(args) == 0
    capsys.readouterr()
    assert train_cli(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert train_cli(args + ["--overwrite"]) == 0
