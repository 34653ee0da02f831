"""`ddit-export train --validation-share`: whole prompts held out, their loss logged, training on the rest."""

import json

import pytest
import torch

from ddit_export.ddit.model import DDiTModel
from ddit_export.families.flux import FLUX
from ddit_export.train import DistillationObjective, collect_trajectories, freeze_for_distillation
from ddit_export.train.prompts import synthetic_conditions
from ddit_export.train.validation import held_out_loss, split_by_prompt
from tests.train.test_train import LATENT, TINY, train_cli

PROMPTS = "a red fox in snow\na lighthouse at dusk\na bowl of pears\n"


@pytest.fixture(scope="module")
def trajectories():
    torch.manual_seed(0)
    model = DDiTModel(FLUX, FLUX.tiny(), [2, 4], lora_rank=4)
    conditions = synthetic_conditions(["one", "two", "three", "four"], FLUX, model.config, text_len=8)
    return model, collect_trajectories(model, conditions, LATENT, steps=3, seed=5, guidance=3.5, batch_size=2)


def test_the_split_holds_whole_prompts_out_the_same_way_every_time(trajectories):
    _, samples = trajectories
    train, held = split_by_prompt(samples, 0.5, seed=3)
    held_prompts, train_prompts = set(held.prompt_index.tolist()), set(train.prompt_index.tolist())
    assert len(held_prompts) == 2 and not held_prompts & train_prompts and held_prompts | train_prompts == {0, 1, 2, 3}
    assert len(held) == 2 * 3 and len(train) == 2 * 3  # every step of a held prompt goes with it
    for part in (train, held):
        for row in range(len(part)):  # each sample is the very state it was, with its own timestep
            match = (samples.latents == part.latents[row]).flatten(1).all(1).nonzero().flatten()
            assert match.numel() == 1 and samples.timesteps[match] == part.timesteps[row]
    again, _ = split_by_prompt(samples, 0.5, seed=3)
    assert torch.equal(again.latents, train.latents)
    assert split_by_prompt(samples, 0.0, seed=3) == (samples, None)
    with pytest.raises(ValueError, match="holds out all 4 prompt"):
        split_by_prompt(samples, 0.9, seed=3)


def test_held_out_loss_is_the_objective_on_those_samples_and_changes_nothing(trajectories):
    from contextlib import nullcontext
    from functools import partial

    from torch.utils.data import default_collate

    from ddit_export.train.distill import step_inputs

    model, samples = trajectories
    freeze_for_distillation(model)
    objective = DistillationObjective(model)
    _, held = split_by_prompt(samples, 0.25, seed=1)
    inputs = partial(step_inputs, seed=0, mu=None, guidance=3.5, names=list(held.conditions), family=FLUX,
                     dtype=torch.float32, device=torch.device("cpu"))  # as the training steps build them

    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = held_out_loss(objective, held, inputs, batch_size=2, autocast=nullcontext, seed=0)
    with torch.no_grad():  # one batch of every held-out sample: the mean the batched check must reproduce
        everything = default_collate([held.item(i) | {"position": torch.tensor(i)} for i in range(len(held))])
        direct = objective(*inputs(everything)).tolist()
    assert loss == pytest.approx(direct, rel=1e-5) and all(v > 0 for v in loss)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert objective.training  # left in the mode it was in


def test_cli_logs_the_held_out_loss_and_trains_on_the_rest(tmp_path, torch_single_thread):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    out = tmp_path / "adapters"
    argv = TINY + ["--patch-sizes", "2,4", "--prompts", str(prompts), "--steps", "4", "--out", str(out),
                   "--validation-share", "0.34"]
    assert train_cli(argv) == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log["samples"] == 2 * 3 and "1 of 3 prompts held out (3 samples)" in log["data"]
    held = [e for e in log["log"] if "held_out_loss_per_size" in e]
    assert [e["step"] for e in held] == [1, 2, 3, 4]  # --steps 4: a check every step (steps // 20, at least 1)
    assert all(set(e["held_out_loss_per_size"]) == {"4"} and e["held_out_loss_per_size"]["4"] > 0 for e in held)
    assert log["config"]["validation_share"] == 0.34  # part of what --resume must match


def test_a_share_that_holds_every_prompt_out_is_refused_in_one_line(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n")
    out = tmp_path / "adapters"
    code = train_cli(TINY + ["--prompts", str(prompts), "--steps", "1", "--out", str(out), "--validation-share", "0.9"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "holds out all 2 prompt(s)" in err and err.count("\n") == 0, err
    assert not (out / "adapters.json").exists()
    code = train_cli(TINY + ["--prompts", str(prompts), "--steps", "1", "--out", str(out), "--validation-share", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "0 <= F < 1" in err, err
