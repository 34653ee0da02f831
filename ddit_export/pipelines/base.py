"""What a pipeline is: the runtime half of one model family (or of one model, like the demo).

The model half (weights, geometry, DDiT modules) is `families/<name>.py`; a pipeline does what the
diffusers pipeline does around the transformer: encode the prompt, draw the noise, run the sampler
loop through `DDiTRunner`, decode, and sample teacher trajectories for training the way inference
does. `pipelines/registry.py` finds the pipeline of an engine folder; nothing else branches on the
family's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..runtime.conditioning import Conditioning
from ..runtime.trace import Trace


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


@dataclass(frozen=True)
class TeacherPipeline:
    sampler: Callable[[str | None], object]  # model id (None: the family's defaults) -> a fresh sampler
    timesteps: Callable[[object, int, int, object], torch.Tensor]  # (sampler, steps, base tokens, device): set, return
    keeps_fp32_latent: bool  # the sampler latent stays fp32 whatever the model dtype (Wan)
    guidance: str  # what --guidance means: "embedded" (a transformer input) or "cfg"
    default_guidance: float
    default_steps: int  # the pipeline's default num_inference_steps
    trains_on_images: bool = False  # `train --images`: encode an image folder with a 2D AutoencoderKL (FLUX);
    # otherwise training is data-free on the teacher's own sampling trajectories (Wan)


class Pipeline:
    """The runtime half of a family. Subclasses set the class attributes and implement the methods."""

    family: str  # the families/ name whose engines this pipeline samples
    teacher: TeacherPipeline  # how training samples teacher trajectories (as inference samples)
    text_encoder_folders: tuple[str, ...] = ()  # sub-folders a pipeline folder needs to encode prompts
    default_prompt: str | None = None  # what `generate` conditions on without --prompt (None: the CLI's)
    # (backend, steps, seed) -> one request's sampler set-up, for serving requests in lock-step (serve/); None: the
    # family's sampler loop is not served yet
    lock_step_sampling: Callable | None = None

    def matches(self, manifest: dict) -> bool:
        """Whether this pipeline samples the engines ``manifest`` describes (family pipelines: by family)."""
        return manifest.get("family") == self.family

    def check_prompt(self, prompt: str) -> str:
        """The prompt to condition on; a pipeline that knows only some prompts refuses the others."""
        return prompt

    def conditioning(self, manifest: dict, prompt: str, guidance: float | None = None, device="cpu",
                     negative_prompt: str = "") -> Conditioning:
        raise NotImplementedError

    def generate(self, backend, conditioning: Conditioning, config, **options) -> GenerationResult:
        raise NotImplementedError

    def image_decoder(self, manifest: dict, device) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``latent -> B x 3 x H x W`` images in [0, 1] when the model has a decoder here, else None."""
        return None

    def write_outputs(self, manifest: dict, latent: torch.Tensor, out: Path, device) -> list[Path]:
        """What `generate` writes for a final latent (images, video, or the latent itself)."""
        raise NotImplementedError

    def encode_prompts(self, folder: Path, prompts: list[str], text_len: int, device) -> dict[str, torch.Tensor]:
        """Training: the prompts' embeddings from a pipeline folder's text encoders, stacked on dim 0."""
        raise NotImplementedError

    def flops(self, config: dict, tokens: int, text_len: int, patch: int, residual: bool, batch: int = 1) -> dict:
        """Per-part FLOPs of one engine call (`pipelines/flop_count.py` states the convention)."""
        raise NotImplementedError


def vae_folder(manifest: dict) -> Path | None:
    """The manifest model's diffusers pipeline folder when it holds a VAE (`vae/`), else None."""
    path = Path(manifest["model"]["id"]).expanduser()
    return path if (path / "vae" / "config.json").is_file() else None


def save_latent(latent: torch.Tensor, out: Path) -> Path:
    import numpy as np

    path = out / "latent.npy"
    np.save(path, latent.float().cpu().numpy())
    return path
