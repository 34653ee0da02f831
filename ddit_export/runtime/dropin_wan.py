"""A drop-in `pipe.transformer` for the stock diffusers `WanPipeline` that runs DDiT engines.

    backend = get_backend("onnx", "engines/wan-1.3b-480p", device="cuda")
    pipe.transformer = DDiTWanTransformer(backend)
    video = pipe(prompt, height=480, width=832, num_frames=81, max_sequence_length=512).frames[0]
    pipe.transformer.trace.schedule   # the patch size of every step

WanPipeline hands the transformer the video latent itself (`B x 16 x F x h x w`, cast to the
transformer's dtype), which is what the engines and the scheduler work on: no packing. The
engines have a static geometry, so frames, height, width, batch and text length must be those
the engines were built for (clear errors otherwise; pass `max_sequence_length=<text_len>`).

Trajectories are found from the calls alone, with FLUX's drop-in rules (see dropin_flux.py):
- Same step: the call has the previous call's timestep AND the very same latent tensor (same
  storage, not modified since). That is WanPipeline's classifier-free guidance: with
  `guidance_scale > 1` it calls the transformer twice per step (cond, uncond) with one
  `latent_model_input`; the second call reuses the step's decision and is NOT recorded as a latent.
- New pipeline call: otherwise, when the timestep does not decrease (t >= previous t), or after
  `_reset_stateful_cache`, which WanPipeline calls (through `maybe_free_model_hooks`) at the end
  of every call. The scheduler history and the trace restart.
- Otherwise: the next step of the current trajectory.
Cost per call: one host read of the timestep scalar (a sync on CUDA, where the scheduler's own
sync would wait anyway) and one copy of the prediction (the backend may reuse its output storage,
and the pipeline keeps the cond prediction across the uncond call).

Engines built with batch 2 for one-call CFG (`ddit-export generate`) do not fit here: WanPipeline
calls the transformer once per pass, so export the drop-in's engines with the pipeline's batch.
Wan 2.2's second expert (`transformer_2`, `boundary_ratio`) is not driven by DDiT: leave it None.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.configuration_utils import FrozenDict
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from ..families.wan import WAN
from .backends.base import Backend
from .dispatcher import DDiTRunner, schedule_config
from .scheduler import Decision, ScheduleConfig
from .trace import Trace


class DDiTWanTransformer(nn.Module):
    """`WanTransformer3DModel` stand-in: scheduler + static engines behind the same call."""

    def __init__(self, backend: Backend, schedule: ScheduleConfig | None = None, total_steps: int | None = None):
        super().__init__()
        if backend.manifest.get("family") != "wan":
            raise ValueError(f"DDiTWanTransformer needs Wan engines; {backend.folder} holds "
                             f"{backend.manifest.get('family')} engines")
        schedule = schedule or schedule_config(backend)
        if schedule.base_last_steps and total_steps is None:
            raise ValueError("base_last_steps needs total_steps (the pipeline's num_inference_steps)")
        self.backend = backend
        self.runner = DDiTRunner(backend, schedule, total_steps)
        # What the pipeline reads: config.patch_size (its size rounding), config.in_channels.
        self.config = FrozenDict(backend.manifest["model"]["config"])
        self.latent_shape = backend.latent_shape
        request = backend.manifest["request"]
        self._text_len = int(request["text_len"])
        self._video = (int(request["frames"]), int(request["height"]), int(request["width"]))
        self._prev: tuple | None = None  # (timestep, hidden_states, its version) of the last call
        self._step = -1
        self._ended = True  # the next call opens a new trajectory

    # -- attributes the pipeline and DiffusionPipeline read ------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.backend.dtype

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def trace(self) -> Trace:
        """Trace of the current (or last finished) pipeline call."""
        return self.runner.trace

    @property
    def decision(self) -> Decision | None:
        return self.runner.decision

    @contextmanager
    def cache_context(self, name: str, **kwargs):
        """WanPipeline wraps each pass in this (for diffusers' caches); engines need nothing."""
        yield

    def _reset_stateful_cache(self) -> None:
        """Called by the pipeline at the end of every call: the next call is a new trajectory."""
        self._ended = True
        self._prev = None

    # -- the call ------------------------------------------------------------------------------------
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_image: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict | None = None,
    ):
        """Same arguments as `WanTransformer3DModel.forward` (image conditioning is refused)."""
        self._check_call(timestep, encoder_hidden_states, encoder_hidden_states_image, attention_kwargs)
        t = float(timestep.reshape(-1)[0])  # the one host read of a call
        version = hidden_states._version
        same_step = (
            self._prev is not None
            and t == self._prev[0]
            and hidden_states is self._prev[1]
            and version == self._prev[2]
        )
        if not same_step:
            if self._ended or t >= self._prev[0]:
                self._start_trajectory(hidden_states)
            self._step += 1
            self.runner.decide(hidden_states, self._step)
        self._prev = (t, hidden_states, version)

        pred = self.runner.run(hidden_states, encoder_hidden_states=encoder_hidden_states, timestep=timestep)
        out = pred.to(hidden_states.dtype)
        if out.data_ptr() == pred.data_ptr():
            out = out.clone()  # the backend may reuse its output buffer for the uncond pass
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def _start_trajectory(self, hidden_states: torch.Tensor) -> None:
        self._check_geometry(hidden_states)
        self.runner.reset()
        self._step = -1
        self._ended = False

    def _check_call(self, timestep, encoder_hidden_states, image_states, attention_kwargs) -> None:
        """Every call (host metadata only): what the engines cannot take, with the fix."""
        if timestep is None or encoder_hidden_states is None:
            raise ValueError("the DDiT transformer needs timestep and encoder_hidden_states")
        if timestep.dim() != 1:
            raise ValueError(
                f"timestep has shape {tuple(timestep.shape)}; the engines take one timestep per video (B,): "
                "per-token timesteps (Wan 2.2 TI2V, expand_timesteps=True) are not supported"
            )
        if image_states is not None:
            raise ValueError("image conditioning (Wan I2V, encoder_hidden_states_image) is not supported")
        if attention_kwargs:
            raise ValueError(
                f"attention_kwargs {sorted(attention_kwargs)} cannot reach compiled engines "
                "(LoRA scales must be merged before export)"
            )
        text_dim = int(self.config["text_dim"])
        if tuple(encoder_hidden_states.shape[1:]) != (self._text_len, text_dim):
            raise ValueError(
                f"the prompt embeddings are {tuple(encoder_hidden_states.shape[1:])} (tokens x width); the engines "
                f"were built for {self._text_len} x {text_dim}: call the pipeline with "
                f"max_sequence_length={self._text_len}"
            )

    def _check_geometry(self, hidden_states: torch.Tensor) -> None:
        """Once per pipeline call: the pipeline's video must be the engines' static geometry."""
        b, c, f, h, w = self.latent_shape
        frames, height, width = self._video
        got = tuple(hidden_states.shape)
        if len(got) != 5 or got[1] != c:
            raise ValueError(f"the pipeline's latent is {got}; the engines take B x {c} x F x h x w video latents")
        if got[2:] != (f, h, w):
            got_frames = (got[2] - 1) * WAN.temporal_scale + 1
            got_h, got_w = got[3] * WAN.vae_scale, got[4] * WAN.vae_scale
            raise ValueError(
                f"the pipeline runs at {got_frames} frames of {got_h}x{got_w}, the engines were built for "
                f"{frames} frames of {height}x{width}: call the pipeline with num_frames={frames}, "
                f"height={height}, width={width}"
            )
        if got[0] != b:
            hint = (
                f"; these engines hold cond + uncond of {b // 2} video(s) for one-call CFG in `ddit-export "
                f"generate`, but WanPipeline calls the transformer once per pass: export with --batch {got[0]}"
                if b == 2 * got[0] else ""
            )
            raise ValueError(
                f"the pipeline's batch is {got[0]} (prompts x num_videos_per_prompt); the engines were built "
                f"for batch {b}{hint}"
            )
