"""Data source (b), data-free: the teacher's own sampling trajectories (the paper's Wan recipe).

For each prompt the teacher (base patch size, adapters off, no grad) samples `steps` steps from
seeded noise exactly as its family's runtime loop does (`pipelines.py`: FLUX's shifted Euler in
the model dtype, Wan's UniPC with a float32 latent; `randn_tensor` noise; timesteps as the pipeline
passes them: FLUX t/1000 in the latent dtype, Wan the sampler's 0..1000 values in float32). Every
(z_t, t) the teacher sees becomes one training sample. Prompt i uses noise seed `seed + i`, so its
trajectory is the one `ddit-export generate --seed seed+i` starts from. With `draws` > 1 every prompt is
sampled again from new noise: draw d of prompt i (of P) uses seed `seed + d*P + i` (draw 0 is the above), so
a few prompts still give many distinct trajectories (`--draws-per-prompt`; docs/quality.md, Data scale).

Classifier-free guidance (`cfg`, Wan) mixes a second, negative-prompt teacher call into the
SAMPLER's velocity only: the samples keep the prompt's conditioning, which is what the student is
trained to match.

All samples are held in memory (CPU): a 480x832, 81-frame Wan latent is 8.4 MB in fp32, so
prompts x draws x steps x 8.4 MB (50 steps x 20 trajectories = 8.4 GB); fewer --teacher-steps or prompts keep it small.
"""

from __future__ import annotations

import torch

from .data import SampleSet


def base_tokens(family, latent_shape) -> int:
    return family.tokens(latent_shape, family.base_patch)


def pipeline_timestep(t: torch.Tensor, batch: int, dtype: torch.dtype, family) -> torch.Tensor:
    """The timestep tensor the pipeline hands the transformer for scheduler timestep `t`."""
    if family.timestep_scale == 1.0:
        return t.expand(batch).to(dtype) / 1000  # FluxPipeline: sigma in [0, 1], in the latent dtype
    return t.expand(batch).to(torch.float32)


def timestep_like_pipeline(timestep: torch.Tensor, latent_dtype: torch.dtype, family) -> torch.Tensor:
    """A per-sample timestep already on the model's scale, in the dtype the pipeline would use."""
    return timestep.to(latent_dtype if family.timestep_scale == 1.0 else torch.float32)


def call_conditions(conditions: dict, guidance: float | None, batch: int, dtype, device) -> dict:
    """Embeddings in the model dtype plus guidance as FluxPipeline makes it (fp32, raw scale)."""
    out = {name: value.to(device=device, dtype=dtype) for name, value in conditions.items()}
    if guidance is not None:
        out["guidance"] = torch.full((batch,), float(guidance), device=device, dtype=torch.float32)
    return out


def teacher_velocity(model, x, timestep, cond: dict, uncond: dict | None, cfg: float | None,
                     patch: int | None = None):
    """The prediction the sampler steps with (at `patch`, default the base size: the teacher); with CFG
    `uncond + cfg * (cond - uncond)`."""
    patch = model.base_patch if patch is None else patch
    pred = model(x, patch, timestep=timestep, **cond)
    if uncond is None:
        return pred
    pred_uncond = model(x, patch, timestep=timestep, **uncond)
    return pred_uncond + cfg * (pred - pred_uncond)


def negative_rows(negative: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
    """One negative embedding serves every prompt; a per-prompt set is indexed like the prompts."""
    return {k: v[[0] * len(rows)] if v.shape[0] == 1 else v[rows] for k, v in negative.items()}


@torch.no_grad()
def collect_trajectories(model, conditions: dict[str, torch.Tensor], latent_shape, steps: int, seed: int,
                         guidance: float | None, batch_size: int = 1, sampler=None, device="cpu",
                         dtype: torch.dtype = torch.float32, autocast=None, progress=None,
                         cfg: float | None = None, negative: dict[str, torch.Tensor] | None = None,
                         patch: int | None = None, draws: int = 1) -> SampleSet:
    """`steps x prompts x draws` samples (z_t, t, prompt) along the teacher's trajectories, kept on the CPU.

    `patch` (default the base size) is the size the sampler steps with: an extra size gives the
    student's own DDiT trajectories instead (`rollouts.py`), whose states drift from the teacher's.

    `guidance` is the embedded guidance (None for models without one). `cfg` > 1 turns on
    classifier-free guidance with the `negative` embeddings (1 or one per prompt). `sampler` defaults
    to the family's (`pipelines.py`). `autocast` (a context factory) wraps the teacher calls in
    mixed precision runs.
    """
    from contextlib import nullcontext

    from ..pipelines.base import initial_noise
    from ..pipelines.registry import teacher_pipeline

    family = model.family
    pipeline = teacher_pipeline(family)
    sampler = sampler or pipeline.sampler(None)
    latent_dtype = torch.float32 if pipeline.keeps_fp32_latent else dtype
    guided = cfg is not None and cfg > 1.0
    if guided and negative is None:
        raise ValueError("classifier-free guidance needs negative embeddings")
    prompts = next(iter(conditions.values())).shape[0]
    trajectories = prompts * draws
    latents, timesteps, run_index = [], [], []
    for start in range(0, trajectories, batch_size):
        runs = range(start, min(start + batch_size, trajectories))  # trajectory r: prompt r % P, noise seed + r
        rows = [r % prompts for r in runs]
        b = len(rows)
        latent = torch.cat([initial_noise((1, *latent_shape[1:]), seed + r, device, latent_dtype) for r in runs])
        cond = call_conditions({k: v[rows] for k, v in conditions.items()}, guidance, b, dtype, device)
        uncond = call_conditions(negative_rows(negative, rows), guidance, b, dtype, device) if guided else None
        for t in pipeline.timesteps(sampler, steps, base_tokens(family, latent_shape), device):  # resets it
            timestep = pipeline_timestep(t, b, latent.dtype, family)
            latents.append(latent.cpu())
            timesteps.append(timestep.cpu())
            run_index.append(torch.tensor(runs))
            with autocast() if autocast else nullcontext():
                pred = teacher_velocity(model, latent.to(dtype), timestep, cond, uncond, cfg, patch)
            latent = sampler.step(pred, t, latent, return_dict=False)[0]
            if progress:
                progress()
    # Ordered prompt-major (every step of prompt 0's first draw, its next draw, ..., then prompt 1): easy to read
    # back in tests.
    runs_of_samples = torch.cat(run_index)
    prompt_index = runs_of_samples % prompts
    order = (prompt_index * trajectories + runs_of_samples).argsort(stable=True)
    count = f"{prompts} prompt(s) x {draws} draw(s)" if draws > 1 else f"{prompts} prompt(s)"
    return SampleSet(
        latents=torch.cat(latents)[order],
        prompt_index=prompt_index[order],
        conditions={k: v.cpu() for k, v in conditions.items()},
        timesteps=torch.cat(timesteps)[order],
        source=(f"teacher trajectories: {count} x {steps} step(s)" if patch in (None, family.base_patch)
                else f"student (size {patch}) trajectories: {count} x {steps} step(s)"),
    )
