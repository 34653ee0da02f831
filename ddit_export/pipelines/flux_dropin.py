"""A drop-in `pipe.transformer` for the stock diffusers `FluxPipeline` that runs DDiT engines.

    backend = get_backend("onnx", "engines/flux-dev-1024", device="cuda")
    pipe.transformer = DDiTFluxTransformer(backend)
    image = pipe(prompt, height=1024, width=1024, max_sequence_length=512).images[0]
    pipe.transformer.trace.schedule   # the patch size of every step

FluxPipeline hands the transformer PACKED latents (B x N x 64, 2x2 patches). Each call is
unpacked to the `B x 16 x h x w` latent the engines and the scheduler work on, run on the engine
the scheduler picks, and the prediction is packed back. The engines have a static geometry, so
height, width, batch and text length must be those the engines were built for (clear errors
otherwise; pass `max_sequence_length=<text_len>` to the pipeline).

Variants (docs/variants.md): `FluxControlPipeline` / `FluxFillPipeline` hand it tokens whose features
continue past the latent's 64 (control latent; masked-image latent + mask): those are unpacked to the
engines' `condition_latent`. `FluxKontextPipeline` appends the reference image's tokens to the sequence:
they are unpacked to `reference_latent` (the reference must have the output's size).

How trajectories and the true-CFG pass are told apart: see `dropin_base`. Each new pipeline
call also compares its `img_ids` with the engines' grid once. Caveat: a bf16 timestep schedule of
more than ~80 steps can round two consecutive timesteps to the same value, which reads as a new
call; run long schedules with fp32 latents.
"""

from __future__ import annotations

import torch

from ..families.flux import CONDITION_LATENT, FLUX, REFERENCE_LATENT, has_reference
from ..runtime.backends.base import Backend
from ..runtime.dropin import DropInTransformer
from ..runtime.scheduler import ScheduleConfig


class DDiTFluxTransformer(DropInTransformer):
    """`FluxTransformer2DModel` stand-in: scheduler + static engines behind the same call."""

    def __init__(self, backend: Backend, schedule: ScheduleConfig | None = None, total_steps: int | None = None,
                 cache=None):
        super().__init__(backend, schedule, total_steps, cache)
        self._bucket_changed()
        self._inputs = frozenset(backend.io_spec.input_names)

    def _bucket_changed(self) -> None:
        request = self.backend.manifest["request"]
        self._pixels = (int(request["height"]), int(request["width"]))
        self._img_ids = FLUX.image_ids(FLUX.base_patch, self.latent_shape).float()
        self._reference = has_reference(self.config)
        if self._reference:
            self._img_ids = torch.cat([self._img_ids, FLUX.reference_ids(FLUX.base_patch, self.latent_shape).float()])
        shapes = {t.name: t.shape for t in self.backend.io_spec.inputs}
        self._condition_shape = shapes.get(CONDITION_LATENT)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        img_ids: torch.Tensor | None = None,
        txt_ids: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        joint_attention_kwargs: dict | None = None,
        controlnet_block_samples=None,
        controlnet_single_block_samples=None,
        return_dict: bool = True,
        controlnet_blocks_repeat: bool = False,
    ):
        """Same arguments as `FluxTransformer2DModel.forward`; ``txt_ids`` are unused (RoPE is folded)."""
        self._check_unsupported(joint_attention_kwargs, controlnet_block_samples, controlnet_single_block_samples)
        if timestep is None or encoder_hidden_states is None:
            raise ValueError("the DDiT transformer needs timestep and encoder_hidden_states")
        if encoder_hidden_states.shape[1] != self._text_len:
            raise ValueError(
                f"the prompt embeddings have {encoder_hidden_states.shape[1]} tokens, the engines were built for "
                f"{self._text_len}: call the pipeline with max_sequence_length={self._text_len}"
            )
        latent = self._track(
            hidden_states, timestep,
            to_latent=lambda packed: self._unpack_latent(packed),
            check_geometry=lambda: self._check_geometry(hidden_states, img_ids),
        )
        tokens, features = self._latent_tokens()  # of the bucket the geometry check picked for this call
        conditioning = {"encoder_hidden_states": encoder_hidden_states, "timestep": timestep}
        if self._condition_shape is not None:  # Control / Fill: the features after the latent's
            conditioning[CONDITION_LATENT] = FLUX.unpack(hidden_states[:, :tokens, features:], FLUX.base_patch,
                                                         self._condition_shape)
        if self._reference:  # Kontext: the tokens after the latent's
            conditioning[REFERENCE_LATENT] = FLUX.unpack(hidden_states[:, tokens:], FLUX.base_patch, self.latent_shape)
        if "pooled_projections" in self._inputs:
            conditioning["pooled_projections"] = pooled_projections
        if "guidance" in self._inputs:
            if guidance is None:
                raise ValueError("the engines were built with guidance embeds; the pipeline passed no guidance")
            conditioning["guidance"] = guidance
        pred = self.runner.run(latent, self._branch, **conditioning)
        # Kontext's pipeline keeps only the latent's tokens of the output, so the latent's tokens are enough.
        return self._output(FLUX.pack(pred, FLUX.base_patch).to(hidden_states.dtype), pred, return_dict)

    def _latent_tokens(self) -> tuple[int, int]:
        """(tokens, features per token) of the latent at the base patch, at the current bucket."""
        _, c, h, w = self.latent_shape
        return (h // FLUX.base_patch) * (w // FLUX.base_patch), FLUX.patch_features(FLUX.base_patch, c)

    def _unpack_latent(self, packed: torch.Tensor) -> torch.Tensor:
        tokens, features = self._latent_tokens()  # read when called: a new call may have switched the bucket
        return FLUX.unpack(packed[:, :tokens, :features], FLUX.base_patch, self.latent_shape)

    def _check_geometry(self, hidden_states: torch.Tensor, img_ids: torch.Tensor | None) -> None:
        """Once per pipeline call: the pipeline's image must be one of the engines' resolution buckets."""
        if img_ids is not None and img_ids.dim() == 2:  # FluxPipeline's base-grid coordinates give its height/width
            rows, cols = (int(img_ids[:, k].max()) + 1 for k in (1, 2))
            self._use_grid((rows * FLUX.base_patch, cols * FLUX.base_patch))
        b, c, h, w = self.latent_shape
        tokens = (h // FLUX.base_patch) * (w // FLUX.base_patch)
        features = int(self.config["in_channels"])  # the latent's 64, plus Control/Fill's conditioning features
        height, width = self._pixels
        sequence = 2 * tokens if self._reference else tokens
        if img_ids is not None and not self._reference and img_ids.dim() == 2 and img_ids.shape[0] > tokens \
                and bool((img_ids[tokens:, 0] == 1).all()):
            raise ValueError("the pipeline appends reference-image tokens (FluxKontextPipeline) but these engines "
                             "were exported without them: export from the Kontext pipeline folder (its "
                             "model_index.json names FluxKontextPipeline)")
        ids_match = img_ids is None or (
            tuple(img_ids.shape) == (sequence, 3) and torch.equal(img_ids.detach().float().cpu(), self._img_ids)
        )
        if self._reference and hidden_states.shape[1] != sequence:
            raise ValueError(f"the reference image gives {hidden_states.shape[1] - tokens} tokens, the engines were "
                             f"built for a {height}x{width} reference ({tokens} tokens): pass an image of "
                             f"{height}x{width} with _auto_resize=False")
        if hidden_states.shape[1:] != (sequence, features) or not ids_match:
            got = _pixels_from_ids(img_ids) if img_ids is not None and img_ids.dim() == 2 else None
            seen = f"{got[0]}x{got[1]} pixels" if got else f"{hidden_states.shape[1]} tokens"
            buckets = self.buckets_line()
            raise ValueError(
                f"the pipeline runs at {seen}, the engines were built for {height}x{width} "
                f"({tokens} tokens): call the pipeline with height={height}, width={width}"
                + (f" ({buckets})" if buckets else "")
            )
        if hidden_states.shape[0] != b:
            raise ValueError(
                f"the pipeline's batch is {hidden_states.shape[0]} (prompts x num_images_per_prompt); "
                f"the engines were built for batch {b}"
            )

    def _check_unsupported(self, joint_attention_kwargs, *controlnet) -> None:
        if joint_attention_kwargs:
            raise ValueError(
                f"joint_attention_kwargs {sorted(joint_attention_kwargs)} cannot reach compiled engines "
                "(LoRA scales and IP-Adapters must be merged before export)"
            )
        if any(c is not None for c in controlnet):
            raise ValueError("ControlNet residuals are not supported by DDiT engines")


def _pixels_from_ids(img_ids: torch.Tensor) -> tuple[int, int]:
    """Image size FluxPipeline asked for, from its base-grid token coordinates (error path only)."""
    img_ids = img_ids[img_ids[:, 0] == 0]  # the latent's tokens (Kontext's reference ones have 1)
    rows = int(img_ids[:, 1].max()) + 1
    cols = int(img_ids[:, 2].max()) + 1
    scale = FLUX.base_patch * FLUX.vae_scale
    return rows * scale, cols * scale
