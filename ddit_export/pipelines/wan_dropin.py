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
Variants (docs/variants-wan.md): `WanImageToVideoPipeline` (Wan 2.1 I2V / FLF2V) hands 16 + 20 channels
(latent, then mask + image latent) and the CLIP image embeddings: the first 16 are the latent the scheduler
observes, the rest go to the engine input `condition_latent`. Wan 2.2 TI2V-5B in `WanPipeline`
(`expand_timesteps`) hands one timestep per token, all equal: the engines take it per video.
Wan 2.2 A14B: load the two-expert folder and set BOTH `pipe.transformer = pipe.transformer_2 = drop_in`;
the drop-in picks the expert by the step's timestep with the pipeline's own rule (`boundary_ratio`, recorded
at export), and one scheduler history runs across the switch.
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
        self._condition_channels = WAN.condition_channels(self.config)  # I2V: mask + image latent
        self._select = getattr(self.backend, "select", None)  # two experts' engines (runtime/backends/experts.py)

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
        """Same arguments as `WanTransformer3DModel.forward`.

        Image-to-video: the channels after the latent's are the condition (engine input `condition_latent`),
        `encoder_hidden_states_image` goes to the engines as it is. Wan 2.2 TI2V's per-token timesteps
        (`expand_timesteps`) must be one value per video, as WanPipeline's text-to-video makes them.
        """
        timestep = self._per_video(timestep)
        self._check_call(timestep, encoder_hidden_states, encoder_hidden_states_image, attention_kwargs)
        c = self.latent_shape[1]
        latent = self._track(hidden_states, timestep,
                             to_latent=lambda x: x[:, :c].contiguous() if x.shape[1] > c else x,  # I2V: the latent
                             check_geometry=lambda: self._check_geometry(hidden_states))
        if self._select is not None:  # Wan 2.2 A14B: the expert WanPipeline's boundary rule picks for this step
            self._select(self._prev[0])
        inputs = {"encoder_hidden_states": encoder_hidden_states, "timestep": timestep}
        if self._condition_channels:
            inputs["condition_latent"] = hidden_states[:, c:]
        if encoder_hidden_states_image is not None:
            inputs["encoder_hidden_states_image"] = encoder_hidden_states_image
        pred = self.runner.run(latent, self._branch, **inputs)
        return self._output(pred.to(hidden_states.dtype), pred, return_dict)

    @staticmethod
    def _per_video(timestep):
        """Wan 2.2 TI2V hands `B x tokens` timesteps; text-to-video makes them all the step's t (one sync to check)."""
        if timestep is None or timestep.dim() != 2:
            return timestep
        if not bool((timestep == timestep[:, :1]).all()):
            raise ValueError("per-token timesteps that differ within a video (Wan 2.2 TI2V image-to-video, "
                             "expand_timesteps with a first-frame mask) are not supported; use WanPipeline's "
                             "text-to-video or a Wan 2.1 / 2.2 A14B image-to-video model")
        return timestep[:, 0]

    def _check_call(self, timestep, encoder_hidden_states, image_states, attention_kwargs) -> None:
        """Every call (host metadata only): what the engines cannot take, with the fix."""
        if timestep is None or encoder_hidden_states is None:
            raise ValueError("the DDiT transformer needs timestep and encoder_hidden_states")
        if timestep.dim() != 1:
            raise ValueError(f"timestep has shape {tuple(timestep.shape)}; the engines take one per video (B,)")
        takes_images = "encoder_hidden_states_image" in self.backend.conditioning_names
        if (image_states is not None) != takes_images:
            raise ValueError("these engines take CLIP image embeddings (Wan I2V): pass encoder_hidden_states_image"
                             if takes_images else "encoder_hidden_states_image was given, but these engines were "
                             "exported from a model without image embeddings (image_dim unset)")
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
        if len(got) != 5 or got[1] != c + self._condition_channels:
            what = f"{c} + {self._condition_channels} condition" if self._condition_channels else f"{c}"
            raise ValueError(f"the pipeline's latent is {got}; the engines take B x {what} x F x h x w video latents")
        if got[2:] != (f, h, w):
            got_frames = (got[2] - 1) * WAN.temporal_scale + 1
            scale = WAN.vae_scale_of(c)
            got_h, got_w = got[3] * scale, got[4] * scale
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
