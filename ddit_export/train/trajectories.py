"""Data source (b), data-free: the teacher's own sampling trajectories (the paper's Wan recipe).

For each prompt the teacher (base patch size, adapters off, no grad) samples `steps` Euler steps
from seeded noise exactly as FluxPipeline does (`runtime.sampling`: FLUX's shifted sigmas,
`randn_tensor` noise, timestep t/1000 in the latent dtype, raw guidance scale which the transformer
multiplies by 1000 itself). Every (z_t, t) the teacher sees becomes one training sample. Prompt i
uses noise seed `seed + i`, so its trajectory is the one `ddit-export generate --seed seed+i`
starts from.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data import SampleSet


def teacher_sampler(model_id: str):
    """The pipeline folder's own scheduler when there is one, else FLUX.1's configuration."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..runtime.sampling import flux_sampler

    folder = Path(model_id).expanduser()
    if (folder / "scheduler" / "scheduler_config.json").is_file():
        return FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    return flux_sampler()


def shift_mu(sampler, image_seq_len: int) -> float:
    """The resolution-dependent shift FluxPipeline applies (also used to draw training noise levels)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = sampler.config
    return float(calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                                 cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)))


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


@torch.no_grad()
def collect_trajectories(model, conditions: dict[str, torch.Tensor], latent_shape, steps: int, seed: int,
                         guidance: float | None, batch_size: int = 1, sampler=None, device="cpu",
                         dtype: torch.dtype = torch.float32, autocast=None, progress=None) -> SampleSet:
    """`steps x prompts` samples (z_t, t, prompt) along the teacher's trajectories, kept on the CPU.

    `guidance` is None for models without a guidance embedding. `autocast` (a context factory) wraps
    the teacher calls in mixed precision runs.
    """
    from contextlib import nullcontext

    from ..runtime.sampling import flux_sampler, flux_timesteps, initial_noise

    family = model.family
    sampler = sampler or flux_sampler()
    prompts = next(iter(conditions.values())).shape[0]
    latents, timesteps, prompt_index = [], [], []
    for start in range(0, prompts, batch_size):
        rows = list(range(start, min(start + batch_size, prompts)))
        b = len(rows)
        latent = torch.cat([initial_noise((1, *latent_shape[1:]), seed + i, device, dtype) for i in rows])
        cond = call_conditions({k: v[rows] for k, v in conditions.items()}, guidance, b, dtype, device)
        schedule = flux_timesteps(sampler, steps, base_tokens(family, latent_shape), device)  # resets the sampler
        for t in schedule:
            timestep = pipeline_timestep(t, b, latent.dtype, family)
            latents.append(latent.cpu())
            timesteps.append(timestep.cpu())
            prompt_index.append(torch.tensor(rows))
            with autocast() if autocast else nullcontext():
                pred = model(latent, model.base_patch, timestep=timestep, **cond)
            latent = sampler.step(pred, t, latent, return_dict=False)[0]
            if progress:
                progress()
    # Ordered prompt-major (all steps of prompt 0, then prompt 1, ...): easy to read back in tests.
    order = torch.cat(prompt_index).argsort(stable=True)
    return SampleSet(
        latents=torch.cat(latents)[order],
        prompt_index=torch.cat(prompt_index)[order],
        conditions={k: v.cpu() for k, v in conditions.items()},
        timesteps=torch.cat(timesteps)[order],
        source=f"teacher trajectories: {prompts} prompt(s) x {steps} step(s)",
    )
