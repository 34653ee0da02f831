"""The FLUX pipeline: the runtime half of the FLUX family (sampler, loop, prompt encoding, decoding,
teacher sampling for training, FLOP formula), for engines used without a diffusers pipeline.

It reproduces what `FluxPipeline` does around the transformer: diffusers'
`FlowMatchEulerDiscreteScheduler` configured as the pipeline folder's `scheduler/` (FLUX.1-schnell:
no shift), else FLUX.1's resolution-dependent shift (`calculate_shift` with base_image_seq_len 256,
max 4096, base_shift 0.5, max_shift 1.15); sigmas `np.linspace(1, 1/steps, steps)`; the pipeline's
noise (`randn_tensor` on the unpacked latent shape with a CPU generator, so a seed gives the same
noise on any device), and timesteps passed as t/1000 in the latent dtype. The only change: every
step goes through `DDiTRunner`, which picks the patch size. Prompts: the model folder's CLIP + T5
through `FluxPipeline.encode_prompt`, padded to the engines' static text length, else synthetic
(runtime/conditioning.py). Guidance (FLUX's embedded guidance scale) defaults to 3.5 when the
engines take a guidance input. Control, Fill and Kontext engines also take an image (and Fill a
mask) on the latent grid: pipelines/flux_images.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..artifacts.iospec import IOSpec
from ..runtime.backends.base import Backend
from ..runtime.conditioning import (
    Conditioning,
    pipeline_folder_with_text_encoders,
    synthetic_conditioning,
)
from ..runtime.runner import DDiTRunner
from ..runtime.scheduler import ScheduleConfig
from ..util import limits
from .base import GenerationResult, Pipeline, TeacherPipeline, initial_noise, save_latent, vae_folder
from .flop_count import FLUX_MLP_RATIO, FLUX_TIME_FREQS, attention, lin, scaled

FLUX_SHIFT = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}


def flux_sampler():
    """FLUX.1's scheduler configuration (dynamic shifting)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, **FLUX_SHIFT)


def shift_mu(sampler, image_seq_len: int) -> float:
    """The resolution-dependent shift FluxPipeline applies (training draws its noise levels with it too)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = sampler.config
    return float(calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                                 cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)))


def flow_sigma(u: torch.Tensor, mu: float) -> torch.Tensor:
    """FLUX's shifted sigma for uniform u (FlowMatchEulerDiscreteScheduler.time_shift, exponential)."""
    return math.exp(mu) / (math.exp(mu) + (1 / u - 1))


def flux_timesteps(sampler, steps: int, image_seq_len: int, device) -> torch.Tensor:
    """Set FLUX's shifted schedule on ``sampler``; ``image_seq_len`` is the base-patch token count."""
    mu = shift_mu(sampler, image_seq_len)
    sampler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu, device=device)
    # Step indices from 0 without the timestep lookup (a host sync), as FluxPipeline does.
    sampler.set_begin_index(0)
    return sampler.timesteps


@dataclass
class FluxSampling:
    """One request's sampler set-up, as FluxPipeline makes it: `Flux.generate` and lock-step serving
    (serve/batched_runner.py) both start from it, so a served request is its solo run."""

    steps: int
    latent: torch.Tensor  # the seeded noise (or the given latents), in the engines' dtype on their device
    sampler: object  # a fresh FlowMatchEulerDiscreteScheduler with FLUX's shifted schedule set
    timesteps: torch.Tensor  # the sampler's, one per step
    engine_timesteps: torch.Tensor  # steps x B: what the engines take (t in the latent dtype, / 1000)
    sigmas: list[float]  # host floats for the scheduler, read once


def flux_sampling(backend: Backend, steps: int, seed: int = 0, latents: torch.Tensor | None = None) -> FluxSampling:
    steps = limits.check_steps(steps)  # from Python too: a typo (steps=10**9) is refused before any allocation
    device, dtype, shape = backend.device, backend.dtype, backend.latent_shape
    if latents is None:
        latent = initial_noise(shape, seed, device, dtype)
    else:
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}; the engines were built for {shape}")
        latent = latents.to(device=device, dtype=dtype)
    sampler = flux_teacher_sampler(backend.manifest.model_id)  # the folder's scheduler (schnell's has no shift)
    base = backend.base_patch
    timesteps = flux_timesteps(sampler, steps, (shape[-2] // base) * (shape[-1] // base), device)
    # As FluxPipeline: t cast to the latent dtype, then / 1000. All steps' values made up front,
    # so the loop only takes views.
    engine_timesteps = (timesteps.to(dtype) / 1000).unsqueeze(1).expand(-1, shape[0]).contiguous()
    return FluxSampling(steps, latent, sampler, timesteps, engine_timesteps, sampler.sigmas.tolist())


DEFAULT_GUIDANCE = 3.5  # FLUX-dev's embedded guidance, when the engines take a guidance input
FILL_GUIDANCE = 30.0  # FluxFillPipeline's default guidance_scale
TEXT_ENCODER_FOLDERS = ("text_encoder", "text_encoder_2")  # CLIP + T5


def weights_variant(manifest: dict) -> str | None:
    """The weights variant the engines' model was loaded with (`--variant`); the folder's other parts share it."""
    return manifest.get("request", {}).get("variant")


@torch.no_grad()
def decode_images(folder: Path, latent: torch.Tensor, device="cpu", variant: str | None = None) -> list:
    """PIL images from a final FLUX latent (`B x 16 x h x w`) with the pipeline folder's VAE."""
    from diffusers import AutoencoderKL
    from diffusers.image_processor import VaeImageProcessor

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", variant=variant).to(device)
    cfg = vae.config
    # As FluxPipeline: undo the latent normalisation, decode, then postprocess to PIL.
    z = latent.to(device=device, dtype=vae.dtype) / cfg.scaling_factor + (cfg.shift_factor or 0.0)
    image = vae.decode(z, return_dict=False)[0]
    processor = VaeImageProcessor(vae_scale_factor=2 ** (len(cfg.block_out_channels) - 1) * 2)
    return processor.postprocess(image, output_type="pil")


def encoded_conditioning(folder: Path, prompt: str, io: IOSpec, guidance: float | None, device="cpu",
                         variant: str | None = None) -> Conditioning:
    from diffusers import FluxPipeline

    shapes = {t.name: t.shape for t in io.inputs}
    batch, text_len, _ = shapes["encoder_hidden_states"]
    # Only the text side is loaded: the engines replace the transformer, the VAE is loaded by the caller.
    # FluxPipeline for every variant: they share its text encoders and encode_prompt.
    pipe = FluxPipeline.from_pretrained(folder, transformer=None, vae=None, variant=variant).to(device)
    with torch.no_grad():
        states, pooled, _ = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, device=torch.device(device), num_images_per_prompt=batch,
            max_sequence_length=text_len,
        )
    return Conditioning(states, pooled, guidance, source=f"text encoders of {folder}")


def _grid_inputs(manifest: dict, io: IOSpec, prompt: str, image, mask, seed: int, device) -> dict:
    """Control/Fill/Kontext engines' inputs on the latent grid (pipelines/flux_images.py)."""
    from ..families.flux import FLUX
    from .flux_images import check_images, encoded_grid_inputs, synthetic_grid_inputs

    config = manifest["model"]["config"]
    folder = vae_folder(manifest)
    pipeline = check_images(config, image, mask, folder is not None)
    shapes = {name: shape for name, shape in FLUX.grid_specs(config, tuple(manifest["latent_shape"]))}
    if not shapes:
        return {}
    if image is None:
        return synthetic_grid_inputs(shapes, prompt)
    return encoded_grid_inputs(pipeline, folder, shapes, image, mask, seed, device, weights_variant(manifest))


def _text_conditioning(manifest: dict, io: IOSpec, prompt: str, guidance: float | None, device) -> Conditioning:
    if guidance is None and "guidance" in io.input_names:
        from ..families.flux import variant_of

        # the stock pipeline's default: FluxFillPipeline's is 30, the others' 3.5
        guidance = FILL_GUIDANCE if variant_of(manifest["model"]["config"]) == "FluxFillPipeline" else DEFAULT_GUIDANCE
    folder = pipeline_folder_with_text_encoders(manifest["model"]["id"], TEXT_ENCODER_FOLDERS)
    if folder is not None:
        return encoded_conditioning(folder, prompt, io, guidance, device, weights_variant(manifest))
    return synthetic_conditioning(prompt, io, guidance)


def flux_teacher_sampler(model_id: str | None):
    """The pipeline folder's own scheduler when there is one, else FLUX.1's configuration."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    folder = Path(model_id or "").expanduser()
    if model_id and (folder / "scheduler" / "scheduler_config.json").is_file():
        return FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    return flux_sampler()


class Flux(Pipeline):
    """FLUX.1 as `FluxPipeline` samples it (module docstring)."""

    family = "flux"
    teacher = TeacherPipeline(flux_teacher_sampler, flux_timesteps, keeps_fp32_latent=False, guidance="embedded",
                              default_guidance=DEFAULT_GUIDANCE, default_steps=28,  # FluxPipeline's defaults
                              trains_on_images=True)
    text_encoder_folders = TEXT_ENCODER_FOLDERS
    lock_step_sampling = staticmethod(flux_sampling)

    def conditioning(self, manifest: dict, prompt: str, guidance: float | None = None, device="cpu",
                     negative_prompt: str = "", image: str | None = None, mask: str | None = None,
                     seed: int = 0) -> Conditioning:
        """Conditioning for ``prompt`` on FLUX engines (the pipeline folder's encoders on ``device``, else synthetic);
        Control/Fill/Kontext engines also get ``image`` (and ``mask``) encoded with the folder's VAE."""
        io = IOSpec.from_json(manifest["io"])
        grid = _grid_inputs(manifest, io, prompt, image, mask, seed, device)
        conditioning = _text_conditioning(manifest, io, prompt, guidance, device)
        conditioning.grid_inputs = grid
        if grid and image is not None:
            conditioning.source += f"; {', '.join(grid)} from {image} through the folder's VAE"
        elif grid and not conditioning.synthetic:
            conditioning.source += f"; {', '.join(grid)} synthetic (seeded from the prompt)"
        return conditioning

    def check_images(self, manifest, image=None, mask=None):
        """Refuse image flags the engines' model does not take, or lacks (before the engines load)."""
        from .flux_images import check_images

        check_images(manifest["model"]["config"], image, mask, vae_folder(manifest) is not None)

    def generate(
        self,
        backend: Backend,
        conditioning: Conditioning,
        config: ScheduleConfig,
        *,
        steps: int = 50,
        seed: int = 0,
        latents: torch.Tensor | None = None,
        return_trajectory: bool = False,
        on_step=None,
        cache=None,
    ) -> GenerationResult:
        """Sample one batch of FLUX images with DDiT patch scheduling on ``backend``'s engines.

        ``on_step(step_index, patch_size)`` is called after each step (progress display).
        ``cache`` (a `runtime.cache.StepCache` on a staged backend) serves steps from TeaCache / first-block caching.
        ``latents`` replaces the seeded noise. The latent is kept in the engines' dtype on the
        backend's device, as FluxPipeline keeps it in the prompt embeddings' dtype.
        """
        setup = flux_sampling(backend, steps, seed, latents)
        device, dtype, shape = backend.device, backend.dtype, backend.latent_shape
        latent, sampler, timesteps = setup.latent, setup.sampler, setup.timesteps
        engine_timesteps = setup.engine_timesteps
        static_inputs = conditioning.engine_inputs(backend.io_spec, device, dtype)

        trajectory = torch.empty((setup.steps + 1, *shape), dtype=dtype, device=device) if return_trajectory else None
        runner = DDiTRunner(backend, config, total_steps=setup.steps, cache=cache)
        sigmas = setup.sigmas
        for i, t in enumerate(timesteps):
            if trajectory is not None:
                trajectory[i].copy_(latent)
            pred = runner.step(latent, i, sigmas[i], timestep=engine_timesteps[i], **static_inputs)
            latent = sampler.step(pred, t, latent, return_dict=False)[0]
            if on_step is not None:
                on_step(i, runner.decision.patch_size)
        if trajectory is not None:
            trajectory[setup.steps].copy_(latent)
        return GenerationResult(latent=latent, trace=runner.finish(), trajectory=trajectory, timesteps=timesteps)

    def image_decoder(self, manifest, device):
        folder = vae_folder(manifest)
        if folder is None:
            return None

        def decode_vae(latent):
            import numpy as np

            pil = decode_images(folder, latent, device, weights_variant(manifest))
            return torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32) / 255.0).permute(2, 0, 1)
                                for i in pil])

        return decode_vae

    def write_outputs(self, manifest: dict, latent: torch.Tensor, out: Path, device) -> list[Path]:
        """PNG images when the model folder has a VAE, else the latent (`latent.npy`)."""
        folder = vae_folder(manifest)
        if folder is None:
            return [save_latent(latent, out)]
        images = decode_images(folder, latent, device, weights_variant(manifest))
        paths = [out / ("image.png" if len(images) == 1 else f"image_{i}.png") for i in range(len(images))]
        for image, path in zip(images, paths):
            image.save(path)
        return paths[:1]

    def encode_prompts(self, folder: Path, prompts: list[str], text_len: int,
                       device) -> dict[str, torch.Tensor]:
        """FLUX text encoders of a pipeline folder, loaded once for all prompts."""
        from diffusers import FluxPipeline

        pipe = FluxPipeline.from_pretrained(folder, transformer=None, vae=None).to(device)
        states, pooled = [], []
        with torch.no_grad():
            for prompt in prompts:
                s, p, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=torch.device(device),
                                             num_images_per_prompt=1, max_sequence_length=text_len)
                states.append(s.float().cpu())
                pooled.append(p.float().cpu())
        del pipe
        return {"encoder_hidden_states": torch.cat(states), "pooled_projections": torch.cat(pooled)}

    def flops(self, config: dict, tokens: int, text_len: int, patch: int, residual: bool,
              batch: int = 1) -> dict:
        """Per-part FLOPs of one FLUX engine call; ``total`` is their sum."""
        d = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
        n, t, f = tokens, text_len, int(config["in_channels"]) // 4 * patch * patch  # FLUX tokens hold 2x2 pixels
        seq, hidden = n + t, FLUX_MLP_RATIO * d
        embedders = 2 if config.get("guidance_embeds") else 1
        double = (2 * lin(1, d, 6 * d) + lin(seq, d, 3 * d) + lin(seq, d, d) + attention(seq, seq, d)
                  + lin(seq, d, hidden) + lin(seq, hidden, d))
        single = (lin(1, d, 3 * d) + lin(seq, d, 3 * d) + lin(seq, d, hidden) + attention(seq, seq, d)
                  + lin(seq, d + hidden, d))
        parts = {
            "embed": lin(n, f, d) + lin(t, int(config["joint_attention_dim"]), d),
            "conditioning": embedders * (lin(1, FLUX_TIME_FREQS, d) + lin(1, d, d))
            + lin(1, int(config["pooled_projection_dim"]), d) + lin(1, d, d),
            "double_blocks": int(config["num_layers"]) * double,
            "single_blocks": int(config["num_single_layers"]) * single,
            "output": lin(1, d, 2 * d) + lin(n, d, f),
            "ddit_residual": lin(n, f, f) if residual else 0,
        }
        return scaled(parts, batch)


FLUX_PIPELINE = Flux()
