"""What each family's pipeline does around the transformer while sampling: the trainer's family-keyed bits.

Teacher trajectories must visit the states inference visits, so each family samples the way its
runtime loop (and diffusers pipeline) does:

- FLUX (`runtime.sampling`): FlowMatchEulerDiscreteScheduler with FLUX.1's resolution-dependent
  shift; the sampler latent is kept in the model dtype; `--guidance` is the EMBEDDED guidance
  scale (a transformer input, FLUX-dev default 3.5).
- Wan (`runtime.sampling_wan`): UniPC for flow matching (Wan 2.1's released configuration); the
  sampler latent stays float32 and the model sees `latent.to(dtype)`; `--guidance` is the
  CLASSIFIER-FREE guidance scale, default 1 (off): the paper trains on the model's own videos, and
  the student only ever learns the conditional velocity, so CFG-free trajectories are enough.
  `--guidance 5` (WanPipeline's default) samples them as inference does, at twice the teacher cost.

Everything else (objective, data stream, checkpoints) is family-agnostic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class TeacherPipeline:
    sampler: Callable[[str | None], object]  # model id (None: the family's defaults) -> a fresh sampler
    schedule: Callable[[object, int, int, object], torch.Tensor]  # (sampler, steps, base tokens, device)
    keeps_fp32_latent: bool  # the sampler latent stays fp32 whatever the model dtype (Wan)
    guidance: str  # what --guidance means: "embedded" (a transformer input) or "cfg"
    default_guidance: float
    default_steps: int  # the pipeline's default num_inference_steps


def flux_teacher_sampler(model_id: str | None):
    """The pipeline folder's own scheduler when there is one, else FLUX.1's configuration."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..pipelines.flux import flux_sampler

    folder = Path(model_id or "").expanduser()
    if model_id and (folder / "scheduler" / "scheduler_config.json").is_file():
        return FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    return flux_sampler()


def flux_schedule(sampler, steps: int, base_tokens: int, device) -> torch.Tensor:
    from ..pipelines.flux import flux_timesteps

    return flux_timesteps(sampler, steps, base_tokens, device)


def wan_teacher_sampler(model_id: str | None):
    from ..pipelines.wan import wan_sampler

    return wan_sampler({"model": {"id": model_id}} if model_id else None)  # the folder's scheduler/, else UniPC


def wan_schedule(sampler, steps: int, base_tokens: int, device) -> torch.Tensor:
    sampler.set_timesteps(steps, device=device)  # resets UniPC's multistep history too
    sampler.set_begin_index(0)  # as WanPipeline
    return sampler.timesteps


PIPELINES = {
    "flux": TeacherPipeline(flux_teacher_sampler, flux_schedule, keeps_fp32_latent=False, guidance="embedded",
                            default_guidance=3.5, default_steps=28),  # FluxPipeline's defaults
    "wan": TeacherPipeline(wan_teacher_sampler, wan_schedule, keeps_fp32_latent=True, guidance="cfg",
                           default_guidance=1.0, default_steps=50),  # WanPipeline's 50 steps
}


def teacher_pipeline(family) -> TeacherPipeline:
    name = family if isinstance(family, str) else family.name
    if name not in PIPELINES:
        raise ValueError(f"training does not know how {name} samples; known: {', '.join(PIPELINES)}")
    return PIPELINES[name]
