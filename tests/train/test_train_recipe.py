"""`ddit-export train` recipe options: student states (--student-states, --rollout-every), --size-weights."""

import json

import pytest
import torch

from ddit_export.ddit.model import DDiTModel
from ddit_export.families.flux import FLUX
from ddit_export.train import TrainConfig, collect_trajectories, train
from ddit_export.train.prompts import synthetic_conditions
from ddit_export.train.rollouts import mix_states, student_rollouts

from .test_train import LATENT, TINY, quiet, tiny_config, train_cli


@pytest.fixture()
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red fox in snow\na lighthouse at dusk\n")
    return path


def tiny_model():
    return DDiTModel(FLUX, FLUX.tiny(), [2, 4, 8], lora_rank=4)


def teacher_set(model, prompts=2, steps=3):
    conditions = synthetic_conditions([f"p{i}" for i in range(prompts)], FLUX, model.config, text_len=8)
    return collect_trajectories(model, conditions, LATENT, steps=steps, seed=5, guidance=3.5, batch_size=2)


def test_student_rollouts_start_from_the_teachers_noise_and_drift(torch_single_thread):
    model = tiny_model()
    with torch.no_grad():  # a student that differs from the teacher, as after some training
        for p in [*model.ddit_parameters(4), *model.ddit_parameters(8)]:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    teacher = teacher_set(model)
    student = student_rollouts(model, teacher, LATENT, steps=3, seed=5, guidance=3.5, sampler=None, batch_size=2,
                               device="cpu", dtype=torch.float32)
    assert len(student) == 2 * len(teacher)  # every prompt once per extra size (4 and 8)
    assert torch.equal(student.timesteps, torch.cat([teacher.timesteps, teacher.timesteps]))
    for part in (student.latents[:6], student.latents[6:]):
        first = part.view(2, 3, *LATENT[1:])[:, 0]
        assert torch.equal(first, teacher.latents.view(2, 3, *LATENT[1:])[:, 0])  # same seeds, same noise
        later = part.view(2, 3, *LATENT[1:])[:, 1:]
        assert not torch.allclose(later, teacher.latents.view(2, 3, *LATENT[1:])[:, 1:])  # the student drifts
    assert not torch.equal(student.latents[6:], student.latents[:6])  # size 8's path is not size 4's


def test_rollouts_keep_the_trained_flags_and_training_mode():
    model = tiny_model()
    from ddit_export.train import freeze_for_distillation

    trainable = freeze_for_distillation(model)
    model.train()
    student_rollouts(model, teacher_set(model, steps=2), LATENT, steps=2, seed=5, guidance=3.5, sampler=None,
                     batch_size=2, device="cpu", dtype=torch.float32)
    assert all(p.requires_grad for p in trainable)  # peft's adapter switch would have turned LoRA off
    assert model.training


def test_mix_states_gives_the_asked_share():
    model = tiny_model()
    teacher = teacher_set(model, prompts=4, steps=3)  # 12 states
    student = student_rollouts(model, teacher, LATENT, steps=3, seed=5, guidance=3.5, sampler=None, batch_size=4,
                               device="cpu", dtype=torch.float32)  # 24 states
    for share, extra in ((0.5, 12), (0.25, 4), (0.0, 0)):
        mixed = mix_states(teacher, student, share, seed=0, round_=1)
        assert len(mixed) == len(teacher) + extra
        assert torch.equal(mixed.latents[:12], teacher.latents)
    again = mix_states(teacher, student, 0.25, seed=0, round_=1)
    other = mix_states(teacher, student, 0.25, seed=0, round_=2)
    assert torch.equal(again.latents, mix_states(teacher, student, 0.25, seed=0, round_=1).latents)  # seeded
    assert not torch.equal(again.latents[12:], other.latents[12:])  # a new draw each round


def test_training_with_student_states_rolls_out_and_trains_on_them(tmp_path, prompts, torch_single_thread):
    messages = []
    result = train(tiny_config(tmp_path / "s", prompts, steps=8, student_states=0.5, rollout_every=3),
                   status=messages.append)
    refreshes = [m for m in messages if "student states refreshed" in m]
    assert [m.split(":")[0] for m in refreshes] == ["step 3", "step 6"]
    assert len(result.samples) == 2 * 2 * 3  # 6 teacher states + as many student states
    log = json.loads((tmp_path / "s" / "train_log.json").read_text())
    assert "student trajectories" in log["data"] and log["config"]["student_states"] == 0.5
    plain = train(tiny_config(tmp_path / "t", prompts, steps=8), status=quiet)
    assert [e["loss"] for e in result.log[:3]] == [e["loss"] for e in plain.log[:3]]  # same until the rollouts
    assert [e["loss"] for e in result.log[3:]] != [e["loss"] for e in plain.log[3:]]


def test_a_zero_size_weight_leaves_that_size_untrained(tmp_path, prompts, torch_single_thread):
    result = train(tiny_config(tmp_path / "w", prompts, steps=3, size_weights={4: 1.0, 8: 0.0}), status=quiet)
    fresh = tiny_model().state_dict()
    trained = result.model.state_dict()
    changed = {k for k in fresh if not torch.equal(fresh[k], trained[k].to(fresh[k].dtype))}
    assert any(k.startswith("extra.4.") for k in changed)
    assert not any(k.startswith("extra.8.") or ".p8." in k for k in changed)


def test_identity_names_the_recipe_only_when_used(tmp_path, prompts):
    plain = tiny_config(tmp_path / "a", prompts).identity()
    assert "student_states" not in plain and "size_weights" not in plain  # older checkpoints still resume
    used = tiny_config(tmp_path / "b", prompts, student_states=0.5, size_weights={4: 1, 8: 2}).identity()
    assert used["student_states"] == 0.5 and used["size_weights"] == {"4": 1.0, "8": 2.0}
    assert TrainConfig(out=str(tmp_path / "c"), model="tiny", prompts=str(prompts), steps=100).rollout_every == 25


@pytest.mark.parametrize("args, message", [
    (["--student-states", "1"], "--student-states is a share of the samples, 0 <= F < 1"),
    (["--size-weights", "4=1"], "--size-weights needs one non-negative weight per trained size 4,8"),
    (["--size-weights", "4=1,8=-1"], "--size-weights needs one non-negative weight"),
    (["--size-weights", "4:1"], "size weights look like 4=1,8=2"),
])
def test_bad_recipe_options_are_one_line_exit_2(tmp_path, prompts, capsys, args, message):
    try:
        code = train_cli(TINY + ["--prompts", str(prompts), "--steps", "1", "--out", str(tmp_path / "o"), *args])
    except SystemExit as refused:  # a malformed value is refused while parsing
        code = refused.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and err.count("\n") == 0, err
    assert not (tmp_path / "o").exists()


def test_student_states_need_trajectories(tmp_path):
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    with pytest.raises(ValueError, match="--student-states needs trajectories"):
        TrainConfig(out=str(tmp_path / "o"), model="tiny", images=str(tmp_path / "imgs"), student_states=0.5)
