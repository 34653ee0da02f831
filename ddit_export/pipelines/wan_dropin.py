"""A drop-in `pipe.transformer` for the stock diffusers `WanPipeline` that runs DDiT engines.

    backend = get_backend("onnx", "engines/wan-1.3b-480p", device="cuda")
    pipe.transformer = DDiTWanTransformer(backend)
    video = pipe(prompt, height=480, width=832, num_frames=81, max_sequence_length=512).frames[0]
    pipe.transformer.trace.schedule   # the patch size of every step

WanPipeline hands the transformer the video latent itself (`B x 16 x F x h x w`, cast to the
transformer's dtype), which is what the engines and the scheduler work on: no packing. The
engines have a static geometry, so frames, height, width, batch and text length must be those
the engines were built for (clear errors otherwise; pass `max_sequence_length=<text_len>`).

Trajectories and the guidance pass are told apart as `dropin_base` says: WanPipeline with
`guidance_scale > 1` calls the transformer twice per step (cond, uncond) with one
`latent_model_input`; the second call reuses the step's decision and is not recorded as a latent,
and `_reset_stateful_cache` (through `maybe_free_model_hooks`) ends each pipeline call.
Cost per call: one host read of the timestep scalar (a sync on CUDA, where the scheduler's own
sync would wait anyway) and one copy of the prediction (the backend may reuse its output storage,
and the pipeline keeps the cond prediction across the uncond call).

Engines built with batch 2 for one-call CFG (`ddit-export generate`) do not fit here: WanPipeline
calls the transformer once per pass, so export the drop-in's engines with the pipeline's batch.
Wan 2.2's second expert (`transformer_2`, `boundary_ratio`) is not driven by DDiT: leave it None.
"""

from __future__ import annotations

import torch

from ..families.wan import WAN
from ..runtime.backends.base import Backend
from ..runtime.dropin import DropInTransformer
from ..runtime.scheduler import ScheduleConfig


class DDiTWanTransformer(DropInTransformer):
    """`WanTransformer3DModel` stand-in: scheduler + static engines behind the same call."""

    timestep_per_sigma = 1000.0  # WanPipeline passes the sampler's timesteps, sigma * 1000

    def __init__(self, backend: Backend, schedule: ScheduleConfig | None = None, total_steps: int | None = None,
                 cache=None):
        super().__init__(backend, schedule, total_steps, cache)
        self._bucket_changed()

    def _bucket_changed(self) -> None:
        request = self.backend.manifest["request"]
        self._video = (int(request["frames"]), int(request["height"]), int(request["width"]))

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
        latent = self._track(hidden_states, timestep, to_latent=lambda x: x,
                             check_geometry=lambda: self._check_geometry(hidden_states))
        pred = self.runner.run(latent, self._branch, encoder_hidden_states=encoder_hidden_states, timestep=timestep)
        return self._output(pred.to(hidden_states.dtype), pred, return_dict)

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
        """Once per pipeline call: the pipeline's video must be one of the engines' resolution buckets."""
        got = tuple(hidden_states.shape)
        if len(got) == 5:
            self._use_grid(got[-2:])
        b, c, f, h, w = self.latent_shape
        frames, height, width = self._video
        if len(got) != 5 or got[1] != c:
            raise ValueError(f"the pipeline's latent is {got}; the engines take B x {c} x F x h x w video latents")
        if got[2:] != (f, h, w):
            got_frames = (got[2] - 1) * WAN.temporal_scale + 1
            got_h, got_w = got[3] * WAN.vae_scale, got[4] * WAN.vae_scale
            buckets = self.buckets_line()
            raise ValueError(
                f"the pipeline runs at {got_frames} frames of {got_h}x{got_w}, the engines were built for "
                f"{frames} frames of {height}x{width}: call the pipeline with num_frames={frames}, "
                f"height={height}, width={width}" + (f" ({buckets})" if buckets else "")
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
