"""Student states (`--student-states`): train on the states the student's own DDiT trajectories visit.

The teacher's trajectories are what the base model sees; a DDiT run sees something else. Every
coarse step lands a little off the teacher's path, and the next steps start from there: the inputs
drift, and a student that only ever saw the teacher's states has never been trained where it is
used (exposure bias; the DAgger argument). So, every `--rollout-every` steps, the current student
samples each prompt from the prompt's own noise seed, stepping every step at one extra size
(`collect_trajectories(..., patch=P)`; all steps at P is the farthest a schedule can drift, so
it covers what the rule's mixed schedules visit). Those states join the teacher's with the teacher
as the target at each of them, as always (objective.py): the student learns to give the teacher's
velocity where it really is, which pulls a drifted trajectory back towards the teacher's.

`--student-states F` is the share of the training stream drawn from the student states; the
teacher's states stay, so the student never forgets the teacher's path. The first rollouts happen
after `--rollout-every` steps, when the student has learnt enough for its states to be worth it.
"""

from __future__ import annotations

import torch

from .data import SampleSet, mixed_seed
from .objective import requires_grad_kept
from .trajectories import collect_trajectories


def student_rollouts(model, teacher: SampleSet, latent_shape, steps: int, seed: int, guidance, sampler,
                     batch_size: int, device, dtype, autocast=None, cfg=None, negative=None,
                     draws: int = 1) -> SampleSet:
    """The student's own trajectories, one per prompt, draw and extra size, from the teacher's noise seeds."""
    parts = []
    was_training = model.training
    model.eval()
    try:
        # peft's adapter switch inside a DDiT call resets LoRA requires_grad flags: keep the training ones.
        with requires_grad_kept(model):
            for patch in model.extra_sizes:
                parts.append(collect_trajectories(
                    model, teacher.conditions, latent_shape, steps, seed, guidance, batch_size=batch_size,
                    sampler=sampler, device=device, dtype=dtype, autocast=autocast, cfg=cfg, negative=negative,
                    patch=patch, draws=draws))
    finally:
        model.train(was_training)
    return SampleSet(latents=torch.cat([p.latents for p in parts]),
                     prompt_index=torch.cat([p.prompt_index for p in parts]),
                     conditions=teacher.conditions, timesteps=torch.cat([p.timesteps for p in parts]),
                     source=f"student trajectories at sizes {model.extra_sizes}")


def mix_states(teacher: SampleSet, student: SampleSet, share: float, seed: int, round_: int) -> SampleSet:
    """Teacher states plus a seeded draw of student states, so that `share` of the set is student states.

    With fewer student states than that share asks for, all of them (the share is then smaller).
    """
    wanted = round(len(teacher) * share / (1.0 - share))
    gen = torch.Generator().manual_seed(mixed_seed(seed, 1_000_003 + round_))
    pick = torch.randperm(len(student), generator=gen)[:wanted]
    return SampleSet(
        latents=torch.cat([teacher.latents, student.latents[pick]]),
        prompt_index=torch.cat([teacher.prompt_index, student.prompt_index[pick]]),
        conditions=teacher.conditions,
        timesteps=torch.cat([teacher.timesteps, student.timesteps[pick]]),
        source=f"{teacher.source}; plus {len(pick)} {student.source} states (round {round_})",
    )
