"""What every drop-in `pipe.transformer` shares: the runner, the attributes pipelines read, and how
trajectories and guidance passes are told apart from the calls alone.

A pipeline never says when it starts or which pass a call is, so:
- Same step: the call has the previous call's timestep AND the very same latent tensor (same
  storage, not modified since): the guidance pass of that step. It reuses the step's decision and
  is NOT recorded as a new latent.
- New pipeline call: otherwise, when the timestep does not decrease (t >= previous t), or after
  the pipeline's end-of-call `_reset_stateful_cache`. The scheduler history and the trace restart.
- Otherwise: the next step of the current trajectory.
Reading the timestep costs one host read of a scalar per call (a sync when it is a CUDA tensor,
landing where the scheduler's own sync would wait anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
from diffusers.configuration_utils import FrozenDict
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from .backends.base import Backend
from .runner import DDiTRunner, schedule_config
from .scheduler import Decision, ScheduleConfig
from .trace import Trace


class DropInTransformer(nn.Module):
    """Scheduler + static engines behind a diffusers transformer's call (subclassed per family)."""

    # What the pipeline's timestep is per unit of the sampler's sigma (FluxPipeline hands the transformer
    # sigma itself; WanPipeline hands it sigma * 1000): the predicted-error rule reads sigma from it.
    timestep_per_sigma = 1.0

    def __init__(self, backend: Backend, schedule: ScheduleConfig | None = None, total_steps: int | None = None,
                 cache=None):
        """``cache``: "teacache:0.25" / "fbcache:0.05" / a CacheSpec / None (staged folders; runtime/cache/).
        Without ``total_steps`` TeaCache cannot force the last step (the pipeline never says which it is)."""
        super().__init__()
        asked = schedule  # None: each bucket's own defaults (its manifest's scheduler block)
        schedule = schedule or schedule_config(backend)
        if schedule.base_last_steps and total_steps is None:
            raise ValueError("base_last_steps needs total_steps (the pipeline's num_inference_steps)")
        self.backend = backend
        # Resolution buckets: the pipeline's height/width pick the folder's bucket at each new pipeline call;
        # another bucket's engines are loaded on first use (the staged ONNX Runtime ones share one trunk).
        self._bucket_backends = {backend.manifest.bucket.name: backend}
        self._given = backend  # the caller's to close; the other buckets' backends are this drop-in's
        self._bucket_settings = (asked, total_steps, cache)
        self.runner = self._runner(backend, schedule, total_steps, cache)
        self._branch: str | None = None  # the pipeline's `cache_context` name ("cond" / "uncond"), for the cache
        # Pipelines read the model config (in_channels, guidance_embeds, patch_size, ...).
        self.config = FrozenDict(backend.manifest.model_config)
        self.latent_shape = backend.latent_shape
        self._text_len = backend.manifest.text_len
        self._prev: tuple | None = None  # (timestep, hidden_states, its version) of the last call
        self._latent: torch.Tensor | None = None  # the current step's latent, as the engines take it
        self._step = -1
        self._ended = True  # the next call opens a new trajectory

    @staticmethod
    def _runner(backend: Backend, schedule: ScheduleConfig, total_steps: int | None, cache) -> DDiTRunner:
        step_cache = None
        if cache is not None:
            from .cache import StepCache, parse_cache

            spec = parse_cache(cache) if isinstance(cache, str) else cache
            step_cache = StepCache(backend, spec) if spec is not None else None
        return DDiTRunner(backend, schedule, total_steps, cache=step_cache)

    def _use_grid(self, grid: tuple[int, ...]) -> None:
        """Run the bucket whose latent grid (h, w: the last two axes) is `grid` (a new pipeline call only).
        One that the folder has no engines for is refused in one line listing its buckets."""
        if tuple(self.latent_shape[-2:]) == tuple(grid):
            return
        buckets = self.backend.manifest.buckets
        match = [b for b in buckets if tuple(b.latent_shape[-2:]) == tuple(grid)]
        if not match:
            return  # the family's geometry check says what the pipeline asked and what the engines take
        bucket = match[0]
        backend = self._bucket_backends.get(bucket.name)
        if backend is None:
            from .backends import get_backend

            backend = get_backend(self.backend.name, self.backend.folder, self.backend.device,
                                  bucket=(bucket.height, bucket.width))
            self._bucket_backends[bucket.name] = backend
        schedule, total_steps, cache = self._bucket_settings
        self.backend = backend
        self.runner = self._runner(backend, schedule or schedule_config(backend), total_steps, cache)
        self.latent_shape = backend.latent_shape
        self._bucket_changed()

    def _bucket_changed(self) -> None:
        """For subclasses: refresh what they keep of the engines' geometry."""

    def close(self) -> None:
        """Close the backends this drop-in opened for other resolution buckets (the one it was given stays open:
        its caller closes it) and go back to that one."""
        if self.backend is not self._given:
            self._use_grid(self._given.latent_shape[-2:])
        for backend in self._bucket_backends.values():
            if backend is not self._given:
                backend.close()
        self._bucket_backends = {self._given.manifest.bucket.name: self._given}

    def buckets_line(self) -> str:
        names = ", ".join(b.name for b in self.backend.manifest.buckets)
        return f"the engines' resolution buckets are {names}" if len(self.backend.manifest.buckets) > 1 else ""

    # -- attributes the pipelines and DiffusionPipeline read -----------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.backend.dtype

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def loras(self) -> tuple:
        """The user LoRAs the engines run with (runtime/loras/)."""
        return tuple(self.backend.loras)

    def set_loras(self, loras) -> None:
        """User LoRAs `[(file, scale), ...]` on the engines (`[]` removes them): what `pipe.load_lora_weights(file)`
        + `pipe.fuse_lora(lora_scale=scale)` do to the stock transformer (staged folders; docs/loras.md)."""
        self.backend.set_loras(loras)

    @property
    def trace(self) -> Trace:
        """Trace of the current (or last finished) pipeline call."""
        return self.runner.trace

    @property
    def decision(self) -> Decision | None:
        return self.runner.decision

    @contextmanager
    def cache_context(self, name: str, **kwargs):
        """Pipelines wrap each pass in this (as for diffusers' caches): names the step cache's branch."""
        self._branch = name
        try:
            yield
        finally:
            self._branch = None

    def _reset_stateful_cache(self) -> None:
        """Called by the pipeline at the end of every call: the next call is a new trajectory."""
        self._ended = True
        self._prev = None
        self._latent = None

    # -- for subclasses ------------------------------------------------------------------------------
    def _track(self, hidden_states: torch.Tensor, timestep: torch.Tensor,
               to_latent: Callable[[torch.Tensor], torch.Tensor], check_geometry: Callable[[], None]) -> torch.Tensor:
        """The step's latent: a new step is observed and decided; the guidance pass reuses it."""
        t = float(timestep.reshape(-1)[0])  # the one host read of a call
        version = hidden_states._version
        same_step = (
            self._prev is not None and t == self._prev[0]
            and hidden_states is self._prev[1] and version == self._prev[2]
        )
        if not same_step:
            if self._ended or t >= self._prev[0]:
                check_geometry()
                self.runner.reset()
                self._step = -1
                self._ended = False
            self._step += 1
            self._latent = to_latent(hidden_states)
            self.runner.decide(self._latent, self._step, t / self.timestep_per_sigma)
        self._prev = (t, hidden_states, version)
        return self._latent

    @staticmethod
    def _output(out: torch.Tensor, pred: torch.Tensor, return_dict: bool):
        if out.data_ptr() == pred.data_ptr():
            out = out.clone()  # the backend may reuse its output buffer for the guidance pass
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)
