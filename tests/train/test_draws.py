"""`ddit-export train --draws-per-prompt K`: every prompt sampled K times from its own noise seeds."""

import json

import pytest
import torch

from ddit_export.ddit.model import DDiTModel
from ddit_export.families.flux import FLUX
from ddit_export.train import TrainConfig, collect_trajectories
from ddit_export.train.prompts import synthetic_conditions
from ddit_export.train.rollouts import student_rollouts
from ddit_export.train.validation import split_by_prompt
from tests.train.test_train import LATENT, TINY, train_cli

STEPS = 3


@pytest.fixture(scope="module")
def model_and_conditions():
    torch.manual_seed(0)
    model = DDiTModel(FLUX, FLUX.tiny(), [2, 4], lora_rank=4)
    return model, synthetic_conditions(["one", "two"], FLUX, model.config, text_len=8)


def collect(model, conditions, draws, **kw):
    return collect_trajectories(model, conditions, LATENT, steps=STEPS, seed=5, guidance=3.5, batch_size=3,
                                draws=draws, **kw)


def first_states(samples, prompt):
    """The first state of each of the prompt's trajectories (its noise), in draw order."""
    mine = samples.latents[samples.prompt_index == prompt]
    return mine[::STEPS]


def test_draws_are_new_trajectories_of_the_same_prompts(model_and_conditions):
    model, conditions = model_and_conditions
    one, three = collect(model, conditions, 1), collect(model, conditions, 3)
    assert len(three) == 3 * len(one) == 2 * 3 * STEPS
    assert three.prompt_index.tolist() == [0] * 3 * STEPS + [1] * 3 * STEPS
    assert three.conditions["encoder_hidden_states"].shape[0] == 2  # embeddings stored once per prompt
    assert "2 prompt(s) x 3 draw(s) x 3 step(s)" in three.source
    for prompt in range(2):
        noises = first_states(three, prompt)
        for draw in range(3):  # draw d of prompt i starts from seed + d * P + i; draw 0 is the single-draw run's
            expected = torch.randn(LATENT, generator=torch.Generator().manual_seed(5 + draw * 2 + prompt))[0]
            assert torch.equal(noises[draw], expected)
        first_draw = three.latents[three.prompt_index == prompt][:STEPS]
        assert torch.allclose(first_draw, one.latents[one.prompt_index == prompt], atol=1e-6)
        assert not torch.allclose(noises[1], noises[2])  # every draw is its own trajectory


def test_the_validation_split_holds_out_a_prompt_with_all_its_draws(model_and_conditions):
    model, conditions = model_and_conditions
    samples = collect(model, conditions, 2)
    train, held = split_by_prompt(samples, 0.5, seed=0)
    assert len(held) == len(train) == 2 * STEPS
    assert set(held.prompt_index.tolist()).isdisjoint(train.prompt_index.tolist())


def test_student_rollouts_replay_every_draw(model_and_conditions):
    model, conditions = model_and_conditions
    teacher = collect(model, conditions, 2)
    rolled = student_rollouts(model, teacher, LATENT, STEPS, seed=5, guidance=3.5, sampler=None, batch_size=3,
                              device="cpu", dtype=torch.float32, draws=2)
    assert len(rolled) == len(teacher)  # one extra size: one rollout per (prompt, draw)
    for prompt in range(2):  # from the teacher's own noise seeds
        assert torch.equal(first_states(rolled, prompt), first_states(teacher, prompt))


def test_the_cli_trains_on_every_draw_and_refuses_what_cannot_draw(tmp_path, capsys, torch_single_thread):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in snow\na lighthouse at dusk\n")
    out = tmp_path / "run"
    assert train_cli(TINY + ["--prompts", str(prompts), "--draws-per-prompt", "2", "--steps", "1",
                             "--out", str(out)]) == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log["samples"] == 2 * 2 * 3 and "x 2 draw(s)" in log["data"]
    assert log["config"]["draws_per_prompt"] == 2  # part of what --resume must match
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        train_cli(TINY + ["--prompts", str(prompts), "--draws-per-prompt", "0", "--steps", "1",
                          "--out", str(tmp_path / "zero")])
    assert refused.value.code == 2 and "--draws-per-prompt" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--draws-per-prompt .* needs --prompts or --prompt-embeds"):
        TrainConfig(out=str(tmp_path / "images"), model="tiny", images=str(tmp_path), draws_per_prompt=2)
