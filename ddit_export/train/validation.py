"""Held-out prompts and the students' loss on them (`ddit-export train --validation-share F`).

A lower training loss is no promise of better images: on the demo, 6000 more steps cut the size-4 loss by a
third and moved no held-out figure (docs/quality.md, A longer-trained base). The loss on prompts the run
never trains on tells fitting from learning. The split is by prompt, so a prompt's whole trajectory (or all
its images) lies on one side: the states of one trajectory are near each other, and a split of states would
measure memory.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.utils.data import default_collate

from .data import SampleSet, mixed_seed

SPLIT_STREAM = 0x5EED_0F_5E7  # the split's own seed stream, apart from the sample order's epochs
MAX_HELD_SAMPLES = 256  # a fixed subset bounds the cost of each check (~2 forward passes of each size per sample)


def split_by_prompt(samples: SampleSet, share: float, seed: int) -> tuple[SampleSet, SampleSet | None]:
    """(training samples, held-out samples): `share` of the prompts, drawn with `seed`, and all their samples."""
    if not share:
        return samples, None
    prompts = int(samples.prompt_index.max()) + 1
    held = held_out_count(prompts, share)
    gen = torch.Generator().manual_seed(mixed_seed(seed, SPLIT_STREAM))
    chosen = torch.randperm(prompts, generator=gen)[:held]
    mask = torch.isin(samples.prompt_index, chosen)
    note = f"; {held} of {prompts} prompts held out ({int(mask.sum())} samples)"
    return _subset(samples, ~mask, samples.source + note), _subset(samples, mask, f"held out{note}")


def held_out_count(prompts: int, share: float) -> int:
    """How many of `prompts` a share holds out: at least one, and never all of them."""
    held = max(1, round(share * prompts))
    if held >= prompts:
        raise ValueError(f"--validation-share {share:g} holds out all {prompts} prompt(s): give more prompts "
                         "or a smaller share")
    return held


def _subset(samples: SampleSet, mask: torch.Tensor, source: str) -> SampleSet:
    timesteps = None if samples.timesteps is None else samples.timesteps[mask]
    return replace(samples, latents=samples.latents[mask], prompt_index=samples.prompt_index[mask],
                   timesteps=timesteps, source=source)


@torch.no_grad()
def held_out_loss(objective, held: SampleSet, inputs, batch_size: int, autocast, seed: int) -> list[float]:
    """Mean per-size loss over (at most MAX_HELD_SAMPLES of) the held-out samples, the same ones every call:
    [sizes] of velocity MSE, or [2][sizes] (velocity MSE, spectral term) when the objective has a spectral weight.

    `inputs` turns a collated batch into (z_t, conditioning) as the training steps do; clean latents are
    noised from their index in the held-out set, so every check sees the same noise.
    """
    gen = torch.Generator().manual_seed(mixed_seed(seed, SPLIT_STREAM + 1))
    rows = torch.randperm(len(held), generator=gen)[:MAX_HELD_SAMPLES].tolist()
    was_training = objective.training
    objective.eval()
    total, count = None, 0
    try:
        for start in range(0, len(rows), batch_size):
            items = [held.item(i) | {"position": torch.tensor(i)} for i in rows[start:start + batch_size]]
            latent, conditioning = inputs(default_collate(items))
            with autocast():
                losses = objective(latent, conditioning).float() * len(items)
            total = losses if total is None else total + losses
            count += len(items)
    finally:
        objective.train(was_training)
    return (total / count).tolist()
