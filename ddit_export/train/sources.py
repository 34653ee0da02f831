"""Turn the run's data arguments into a `SampleSet` held in memory."""

from __future__ import annotations

import torch

from ..pipelines.registry import teacher_pipeline
from .config import TrainConfig
from .data import SampleSet
from .images import encode_image_folder, resolve_vae
from .prompts import (
    NEGATIVE_PROMPT,
    load_negative_embeds,
    load_prompt_embeds,
    prompt_conditions,
    read_prompts,
    synthetic_conditions,
)
from .rollouts import student_rollouts
from .trajectories import collect_trajectories


def guidance_for(model, config: TrainConfig) -> float | None:
    """FLUX-dev style models take an embedded guidance scale; others (schnell, Wan) take none."""
    names = [name for name, _ in model.family.condition_specs(model.config, 1, 1)]
    return config.guidance if "guidance" in names and teacher_pipeline(model.family).guidance == "embedded" else None


def cfg_for(model, config: TrainConfig) -> float | None:
    """The classifier-free guidance scale of the trajectories (Wan), None when off (<= 1) or not the family's."""
    guided = teacher_pipeline(model.family).guidance == "cfg" and config.guidance > 1.0
    return config.guidance if guided else None


def image_samples(config: TrainConfig, model, device) -> SampleSet:
    fam = model.family
    folder = encode_image_folder(config.images, resolve_vae(config.vae, config.model), fam, config.height,
                                 config.width, batch_size=config.batch_size, device=device)
    captioned = [i for i, c in enumerate(folder.captioned) if c]
    bare = [i for i, c in enumerate(folder.captioned) if not c]
    parts, source = {}, "synthetic (seeded from each image's file name)"
    if captioned:
        conds, source = prompt_conditions([folder.prompts[i] for i in captioned], fam, model.config, config.model,
                                          config.text_len, device)
        parts.update({i: {k: v[n] for k, v in conds.items()} for n, i in enumerate(captioned)})
    if bare:
        conds = synthetic_conditions([folder.prompts[i] for i in bare], fam, model.config, config.text_len)
        parts.update({i: {k: v[n] for k, v in conds.items()} for n, i in enumerate(bare)})
    names = parts[0].keys()
    conditions = {k: torch.stack([parts[i][k] for i in range(len(parts))]) for k in names}
    n = folder.latents.shape[0]
    return SampleSet(latents=folder.latents, prompt_index=torch.arange(n), conditions=conditions, timesteps=None,
                     source=f"{n} image(s) from {config.images} ({len(captioned)} captioned; conditioning: {source})")


def trajectory_samples(config: TrainConfig, model, device, autocast=None, progress=None) -> SampleSet:
    fam, cfg, negative = model.family, cfg_for(model, config), None
    if config.prompt_embeds:
        conditions, source = load_prompt_embeds(config.prompt_embeds, fam, model.config), config.prompt_embeds
        if cfg:
            negative = load_negative_embeds(config.prompt_embeds, fam, model.config)
    else:
        # With CFG the runtime's negative prompt rides along as a last row: one text-encoder load for all.
        texts = read_prompts(config.prompts) + ([NEGATIVE_PROMPT] if cfg else [])
        conditions, source = prompt_conditions(texts, fam, model.config, config.model, config.text_len, device)
        if cfg:
            negative = {k: v[-1:] for k, v in conditions.items()}
            conditions = {k: v[:-1] for k, v in conditions.items()}
    latent_shape = config.latent_shape(fam.latent_channels_of(model.config))  # the teacher's latent
    samples = collect_trajectories(
        model, conditions, latent_shape, config.teacher_steps, config.seed, guidance_for(model, config),
        batch_size=config.batch_size, sampler=teacher_pipeline(fam).sampler(config.model), device=device,
        dtype=config.torch_dtype, autocast=autocast, progress=progress, cfg=cfg, negative=negative,
        draws=config.draws_per_prompt,
    )
    samples.source += f" (conditioning: {source}{f'; CFG {cfg}' if cfg else ''})"
    samples.negative = negative
    return samples


def student_samples(config: TrainConfig, model, teacher: SampleSet, device, autocast=None) -> SampleSet:
    """The current student's own DDiT trajectories over the teacher's prompts and seeds (rollouts.py)."""
    fam = model.family
    return student_rollouts(model, teacher, config.latent_shape(fam.latent_channels_of(model.config)),
                            config.teacher_steps, config.seed, guidance_for(model, config),
                            teacher_pipeline(fam).sampler(config.model), config.batch_size, device,
                            config.torch_dtype, autocast, cfg_for(model, config), teacher.negative,
                            draws=config.draws_per_prompt)


def build_samples(config: TrainConfig, model, device, autocast=None, progress=None) -> SampleSet:
    if config.images:
        return image_samples(config, model, device)
    return trajectory_samples(config, model, device, autocast, progress)
