"""Denoising loop for engines used without a diffusers pipeline (the `generate` command, tests).

For FLUX it reproduces what `FluxPipeline` does around the transformer: diffusers'
`FlowMatchEulerDiscreteScheduler` with FLUX.1's resolution-dependent shift (`calculate_shift`
with base_image_seq_len 256, max 4096, base_shift 0.5, max_shift 1.15; sigmas
`np.linspace(1, 1/steps, steps)`), the pipeline's noise (`randn_tensor` on the unpacked latent
shape with a CPU generator, so a seed gives the same noise on any device), and timesteps passed
as t/1000 in the latent dtype. The only change: every step goes through `DDiTRunner`, which picks
the patch size. Wan engines are sampled as `WanPipeline` does, in `sampling_wan.py` (`generate`
dispatches on the manifest's family).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..runtime.backends.base import Backend
from ..runtime.conditioning import Conditioning
from ..runtime.runner import DDiTRunner
from ..runtime.scheduler import ScheduleConfig
from ..runtime.trace import Trace

FLUX_SHIFT = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}


def flux_sampler():
    """FLUX.1's scheduler configuration (dynamic shifting)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, **FLUX_SHIFT)


def flux_timesteps(sampler, steps: int, image_seq_len: int, device) -> torch.Tensor:
    """Set FLUX's shifted schedule on ``sampler``; ``image_seq_len`` is the base-patch token count."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = sampler.config
    mu = calculate_shift(
        image_seq_len,
        cfg.get("base_image_seq_len", 256),
        cfg.get("max_image_seq_len", 4096),
        cfg.get("base_shift", 0.5),
        cfg.get("max_shift", 1.15),
    )
    sampler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu, device=device)
    # Step indices from 0 without the timestep lookup (a host sync), as FluxPipeline does.
    sampler.set_begin_index(0)
    return sampler.timesteps


def initial_noise(shape, seed: int, device, dtype: torch.dtype) -> torch.Tensor:
    """The noise FluxPipeline draws for this seed (before packing)."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(tuple(shape), generator=torch.Generator("cpu").manual_seed(seed), device=torch.device(device),
                        dtype=dtype)


@dataclass
class GenerationResult:
    latent: torch.Tensor  # final sampler latent, B x C [x F] x h x w
    trace: Trace
    trajectory: torch.Tensor | None  # [steps + 1, B, C, [F,] h, w]: latent before each step, then the final one
    timesteps: torch.Tensor
    cfg: str | None = None  # Wan: classifier-free guidance "off" | "batched" | "two-calls"; FLUX: None


def generate(
    backend: Backend,
    conditioning: Conditioning,
    schedule: ScheduleConfig,
    *,
    steps: int = 50,
    seed: int = 0,
    latents: torch.Tensor | None = None,
    return_trajectory: bool = False,
    on_step=None,
) -> GenerationResult:
    """Sample one batch with DDiT patch scheduling on ``backend``'s engines (Wan: `generate_wan`).

    ``on_step(step_index, patch_size)`` is called after each step (progress display).
    ``latents`` replaces the seeded noise. The latent is kept in the engines' dtype on the
    backend's device, as FluxPipeline keeps it in the prompt embeddings' dtype.
    """
    if backend.manifest.get("family") == "wan":  # Wan's sampler, float32 latent and CFG: sampling_wan.py
        from .wan import generate_wan

        return generate_wan(backend, conditioning, schedule, steps=steps, seed=seed, latents=latents,
                            return_trajectory=return_trajectory, on_step=on_step)
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be a positive integer (got {steps!r})")
    device, dtype, shape = backend.device, backend.dtype, backend.latent_shape
    if latents is None:
        latent = initial_noise(shape, seed, device, dtype)
    else:
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}; the engines were built for {shape}")
        latent = latents.to(device=device, dtype=dtype)

    sampler = flux_sampler()
    base = backend.base_patch
    timesteps = flux_timesteps(sampler, steps, (shape[-2] // base) * (shape[-1] // base), device)
    # As FluxPipeline: t cast to the latent dtype, then / 1000. All steps' values made up front,
    # so the loop only takes views.
    engine_timesteps = (timesteps.to(dtype) / 1000).unsqueeze(1).expand(-1, shape[0]).contiguous()
    static_inputs = conditioning.engine_inputs(backend.input_metadata, device, dtype)

    trajectory = torch.empty((steps + 1, *shape), dtype=dtype, device=device) if return_trajectory else None
    runner = DDiTRunner(backend, schedule, total_steps=steps)
    for i, t in enumerate(timesteps):
        if trajectory is not None:
            trajectory[i].copy_(latent)
        pred = runner.step(latent, i, timestep=engine_timesteps[i], **static_inputs)
        latent = sampler.step(pred, t, latent, return_dict=False)[0]
        if on_step is not None:
            on_step(i, runner.decision.patch_size)
    if trajectory is not None:
        trajectory[steps].copy_(latent)
    return GenerationResult(latent=latent, trace=runner.finish(), trajectory=trajectory, timesteps=timesteps)


def vae_folder(manifest: dict) -> Path | None:
    """The manifest model's diffusers pipeline folder when it holds a VAE (`vae/`), else None."""
    path = Path(manifest["model"]["id"]).expanduser()
    return path if (path / "vae" / "config.json").is_file() else None


@torch.no_grad()
def decode_images(folder: Path, latent: torch.Tensor, device="cpu") -> list:
    """PIL images from a final FLUX latent (`B x 16 x h x w`) with the pipeline folder's VAE."""
    from diffusers import AutoencoderKL
    from diffusers.image_processor import VaeImageProcessor

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").to(device)
    cfg = vae.config
    # As FluxPipeline: undo the latent normalisation, decode, then postprocess to PIL.
    z = latent.to(device=device, dtype=vae.dtype) / cfg.scaling_factor + (cfg.shift_factor or 0.0)
    image = vae.decode(z, return_dict=False)[0]
    processor = VaeImageProcessor(vae_scale_factor=2 ** (len(cfg.block_out_channels) - 1) * 2)
    return processor.postprocess(image, output_type="pil")
