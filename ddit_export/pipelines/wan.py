"""The Wan 2.1 pipeline: the runtime half of the Wan family, for engines used without a diffusers pipeline.

It reproduces what `WanPipeline` does around the transformer, so that the drop-in and this loop
give the same video for the same seed:
- Sampler: diffusers' `UniPCMultistepScheduler` for flow matching, with the configuration Wan 2.1
  ships (`flow_prediction`, `use_flow_sigmas`, `flow_shift` 3.0 = Wan's 480p value, solver order 2,
  bh2); the pipeline folder's own `scheduler/` when the engines' model is a pipeline folder.
  (WanPipeline's signature names FlowMatchEulerDiscreteScheduler, but the released checkpoints
  run UniPC, which is what their videos were made with.)
- Noise: `randn_tensor` in float32 with a CPU generator, as WanPipeline's `prepare_latents`.
  The sampler latent stays float32 whatever the engine dtype; the model sees `latent.to(dtype)`.
- Timesteps: the sampler's integer timesteps (sigma * 1000), expanded to the batch and passed in
  float32 (Wan's `float32_inputs`); `set_begin_index(0)` avoids the sampler's timestep lookup.
- Classifier-free guidance (`guidance > 1`): `uncond + g * (cond - uncond)` as WanPipeline. One
  DDiT decision per step serves both passes. An engine built with twice the video batch
  (`--batch 2` for one video) runs cond and uncond in ONE call: the latent is written into both
  halves of a preallocated input, the prompt and negative embeddings are concatenated once per
  request, and the prediction is split. Otherwise the step makes two calls of the same engine.

Variants (docs/variants-wan.md): image-to-video engines take the same condition latent and image
embeddings at every step and for both passes (`conditioning.grid_inputs`, made by pipelines/wan_images.py as
WanImageToVideoPipeline makes them); a two-expert folder (Wan 2.2 A14B) is one backend whose expert is
selected before each step by WanPipeline's boundary rule, so one DDiT runner spans the switch.

Prompts: `guidance` is the classifier-free guidance scale (WanPipeline's default 5.0; <= 1 turns CFG
off), and with CFG a negative prompt (WanPipeline's default "") is encoded the same way. The
embeddings have the VIDEO batch. A Wan pipeline folder needs only `text_encoder/` (UMT5).

Host synchronisations per step: the DDiT scheduler's one `.tolist()`; nothing here adds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..artifacts.iospec import IOSpec
from ..runtime.backends.base import Backend
from ..runtime.conditioning import Conditioning, pipeline_folder_with_text_encoders, prompt_seed
from ..runtime.runner import DDiTRunner
from ..runtime.scheduler import ScheduleConfig
from ..util import limits
from .base import GenerationResult, Pipeline, TeacherPipeline, initial_noise, save_latent, vae_folder
from .flop_count import attention, lin, scaled

DEFAULT_CFG = 5.0  # WanPipeline's default guidance_scale
TEXT_ENCODER_FOLDERS = ("text_encoder",)  # UMT5
# Wan 2.1's released scheduler configuration (Wan-AI/Wan2.1-T2V-*-Diffusers, scheduler/).
WAN_UNIPC = dict(
    num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
    solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
)


@dataclass(frozen=True)
class CfgLayout:
    """How one step's model calls are laid out on an engine of a given batch."""

    video_batch: int  # videos sampled at once (the sampler latent's batch)
    guided: bool  # classifier-free guidance on (scale > 1)
    batched: bool  # cond and uncond in one call of a 2 x video_batch engine

    @property
    def mode(self) -> str:
        return "off" if not self.guided else ("batched" if self.batched else "two-calls")


def cfg_layout(engine_batch: int, guidance: float | None, batched: bool | None = None) -> CfgLayout:
    """With CFG an even engine batch is read as cond + uncond halves (``batched=None``: auto).

    ``batched=False`` forces two calls per step (the engine batch is then the video batch).
    """
    guided = guidance is not None and guidance > 1.0
    if not guided:
        return CfgLayout(engine_batch, False, False)
    if batched is None:
        batched = engine_batch % 2 == 0
    if batched and engine_batch % 2:
        raise ValueError(f"one-call CFG needs an engine batch of 2 x videos; these engines have batch {engine_batch}")
    return CfgLayout(engine_batch // 2 if batched else engine_batch, True, batched)


def wan_sampler(manifest: dict | None = None):
    """The pipeline folder's scheduler if the engines' model has one, else Wan 2.1's UniPC."""
    from diffusers import UniPCMultistepScheduler

    if manifest is not None:
        folder = Path(manifest["model"]["id"]).expanduser()
        if (folder / "scheduler" / "scheduler_config.json").is_file():
            import diffusers

            config = UniPCMultistepScheduler.load_config(folder, subfolder="scheduler")
            return getattr(diffusers, config["_class_name"]).from_config(config)
    return UniPCMultistepScheduler(**WAN_UNIPC)



def _extra_inputs(conditioning: Conditioning, layout: CfgLayout, device, dtype) -> dict[str, torch.Tensor]:
    """Image-to-video inputs (the same for cond and uncond, as WanImageToVideoPipeline): doubled for one-call CFG."""
    extra = conditioning.grid_inputs  # condition_latent, encoder_hidden_states_image: engine inputs by name
    return {k: (torch.cat([v, v]) if layout.batched else v).to(device=device, dtype=dtype) for k, v in extra.items()}


def _embeddings(conditioning: Conditioning, layout: CfgLayout, device, dtype):
    """Prompt (and negative) embeddings of the video batch, on the engines' device and dtype."""
    cond = conditioning.encoder_hidden_states
    if cond.shape[0] != layout.video_batch:
        raise ValueError(f"the prompt embeddings have batch {cond.shape[0]}; this run samples {layout.video_batch}")
    cond = cond.to(device=device, dtype=dtype)
    if not layout.guided:
        return cond, None
    neg = conditioning.negative_encoder_hidden_states
    if neg is None or tuple(neg.shape) != tuple(cond.shape):
        got = None if neg is None else tuple(neg.shape)
        raise ValueError(f"classifier-free guidance needs negative embeddings of shape {tuple(cond.shape)} (got {got})")
    return cond, neg.to(device=device, dtype=dtype)


@torch.no_grad()
def decode_video(folder: Path, latent: torch.Tensor, device="cpu") -> list[list]:
    """PIL frames per video from a final Wan latent (`B x 16 x F x h x w`) with the folder's VAE."""
    from diffusers import AutoencoderKLWan
    from diffusers.video_processor import VideoProcessor

    vae = AutoencoderKLWan.from_pretrained(folder, subfolder="vae").to(device)
    cfg = vae.config
    # As WanPipeline: undo the per-channel latent normalisation, decode, postprocess to PIL.
    mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(device, vae.dtype)
    inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(device, vae.dtype)
    z = latent.to(device=device, dtype=vae.dtype) / inv_std + mean
    video = vae.decode(z, return_dict=False)[0]
    return VideoProcessor(vae_scale_factor=cfg.scale_factor_spatial).postprocess_video(video, output_type="pil")



def _image_inputs(manifest, shapes, layout, prompt, image, last_image, device) -> tuple[dict, str]:
    """Image-to-video engine inputs of the VIDEO batch (one-call CFG doubles them) and a note for the source."""
    from .wan_images import CONDITION, IMAGE_EMBEDS, encoded_inputs, synthetic_inputs

    engine_batch = shapes["encoder_hidden_states"][0]
    wanted = {n: (shapes[n][0] // engine_batch * layout.video_batch, *shapes[n][1:])
              for n in (CONDITION, IMAGE_EMBEDS) if n in shapes}
    if not wanted:
        return {}, ""
    folder = vae_folder(manifest)
    if image is not None and folder is not None:
        return encoded_inputs(folder, manifest, wanted, image, last_image, device), f"; image {image}"
    return synthetic_inputs(wanted, prompt), "; synthetic image inputs (no --image)"


def wan_teacher_sampler(model_id: str | None):
    return wan_sampler({"model": {"id": model_id}} if model_id else None)  # the folder's scheduler/, else UniPC


def wan_timesteps(sampler, steps: int, base_tokens: int, device) -> torch.Tensor:
    sampler.set_timesteps(steps, device=device)  # resets UniPC's multistep history too
    sampler.set_begin_index(0)  # as WanPipeline
    return sampler.timesteps




class Wan(Pipeline):
    """Wan 2.1 text-to-video as `WanPipeline` samples it (module docstring)."""

    family = "wan"
    # CFG-free trajectories by default: the student only learns the conditional velocity (train/trajectories.py)
    teacher = TeacherPipeline(wan_teacher_sampler, wan_timesteps, keeps_fp32_latent=True, guidance="cfg",
                              default_guidance=1.0, default_steps=50)  # WanPipeline's 50 steps
    text_encoder_folders = TEXT_ENCODER_FOLDERS

    def conditioning(self, manifest: dict, prompt: str, guidance: float | None = None, device="cpu",
                     negative_prompt: str = "", image: str | None = None, last_image: str | None = None,
                     seed: int = 0) -> Conditioning:
        """Wan: prompt (and, with CFG, negative prompt) embeddings of the video batch; image-to-video engines also
        get their image inputs (pipelines/wan_images.py) in ``grid_inputs``. ``seed`` is the noise's, drawn by
        generate (the image inputs need none: the VAE's mode, as the pipeline)."""
        guidance = DEFAULT_CFG if guidance is None else float(guidance)
        io = IOSpec.from_json(manifest["io"])
        shapes = {t.name: tuple(t.shape) for t in io.inputs}
        engine_batch, text_len, dim = shapes["encoder_hidden_states"]
        layout = cfg_layout(engine_batch, guidance)
        images = _image_inputs(manifest, shapes, layout, prompt, image, last_image, device)
        folder = pipeline_folder_with_text_encoders(manifest["model"]["id"], TEXT_ENCODER_FOLDERS)
        if folder is not None:
            from diffusers import WanPipeline

            # Only the text side is loaded; the engines replace the transformer(s).
            pipe = WanPipeline.from_pretrained(folder, transformer=None, transformer_2=None, vae=None).to(device)
            with torch.no_grad():
                cond, neg = pipe.encode_prompt(
                    prompt=prompt, negative_prompt=negative_prompt if layout.guided else None,
                    do_classifier_free_guidance=layout.guided, num_videos_per_prompt=layout.video_batch,
                    max_sequence_length=text_len, device=torch.device(device),
                )
            source = f"text encoder of {folder}{images[1]}"
            return Conditioning(cond, None, guidance, source, neg, grid_inputs=images[0])

        def draw(text: str) -> torch.Tensor:
            gen = torch.Generator().manual_seed(prompt_seed(text))
            return torch.randn((1, text_len, dim), generator=gen).expand(layout.video_batch, -1, -1)

        neg = draw(negative_prompt) if layout.guided else None
        source = f"synthetic (seeded from sha256 of the prompt: {prompt_seed(prompt)}){images[1]}"
        return Conditioning(draw(prompt), None, guidance, source, neg, grid_inputs=images[0])

    def check_images(self, manifest, image=None, mask=None, last_image=None):
        """Refuse image flags the engines' model does not take, or lacks (before the engines load)."""
        from .wan_images import check_images

        check_images(manifest, image, last_image, vae_folder(manifest))

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
        batched_cfg: bool | None = None,
        on_step=None,
        cache=None,
    ) -> GenerationResult:
        """Sample one batch of Wan videos with DDiT patch scheduling; see the module docstring.

        ``conditioning.guidance`` is the CFG scale (None or <= 1: no guidance); its embeddings have
        the video batch. ``batched_cfg`` None picks one-call CFG when the engine batch allows it.
        """
        steps = limits.check_steps(steps)  # from Python too: a typo (steps=10**9) is refused before any allocation
        device, dtype, engine_shape = backend.device, backend.dtype, backend.latent_shape
        layout = cfg_layout(engine_shape[0], conditioning.guidance, batched_cfg)
        shape = (layout.video_batch, *engine_shape[1:])
        if latents is None:
            latent = initial_noise(shape, seed, device, torch.float32)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents have shape {tuple(latents.shape)}; these engines sample {shape}")
            latent = latents.to(device=device, dtype=torch.float32)
        cond, uncond = _embeddings(conditioning, layout, device, dtype)

        sampler = wan_sampler(backend.manifest)
        sampler.set_timesteps(steps, device=device)
        sampler.set_begin_index(0)  # as WanPipeline: no timestep lookup (a host sync) per step
        timesteps = sampler.timesteps
        # Every step's engine timestep made up front, so the loop only takes views.
        engine_timesteps = timesteps.float().unsqueeze(1).expand(-1, engine_shape[0]).contiguous()
        # One-call CFG: cond and uncond halves of one input, filled in place each step (no allocation).
        doubled = torch.empty(engine_shape, dtype=dtype, device=device) if layout.batched else None
        both = torch.cat([cond, uncond]) if layout.batched else None
        scale = float(conditioning.guidance) if layout.guided else 1.0

        trajectory = torch.empty((steps + 1, *shape), dtype=torch.float32, device=device) if return_trajectory else None
        runner = DDiTRunner(backend, config, total_steps=steps, cache=cache)
        sigmas = sampler.sigmas.tolist()  # host floats for the scheduler, read once
        select = getattr(backend, "select", None)  # two experts (Wan 2.2 A14B): WanPipeline's boundary rule per step
        host_timesteps = timesteps.tolist() if select is not None else None
        extra = _extra_inputs(conditioning, layout, device, dtype)  # I2V: condition latent, image embeddings
        for i, t in enumerate(timesteps):
            if trajectory is not None:
                trajectory[i].copy_(latent)
            x = latent.to(dtype)  # what WanPipeline hands the transformer (and so what DDiT observes)
            if select is not None:
                select(host_timesteps[i])
            runner.decide(x, i, sigmas[i])
            ts = engine_timesteps[i]
            if not layout.guided:
                pred = runner.run(x, encoder_hidden_states=cond, timestep=ts, **extra)
            elif layout.batched:
                b = layout.video_batch
                doubled[:b].copy_(x)
                doubled[b:].copy_(x)
                pred_cond, pred_uncond = runner.run(doubled, encoder_hidden_states=both, timestep=ts, **extra).chunk(2)
                pred = pred_uncond + scale * (pred_cond - pred_uncond)
            else:
                # The backend may reuse its output storage on the next call: keep the cond pass.
                pred_cond = runner.run(x, "cond", encoder_hidden_states=cond, timestep=ts, **extra).clone()
                pred_uncond = runner.run(x, "uncond", encoder_hidden_states=uncond, timestep=ts, **extra)
                pred = pred_uncond + scale * (pred_cond - pred_uncond)
            latent = sampler.step(pred, t, latent, return_dict=False)[0]
            if on_step is not None:
                on_step(i, runner.decision.patch_size)
        if trajectory is not None:
            trajectory[steps].copy_(latent)
        return GenerationResult(latent=latent, trace=runner.finish(), trajectory=trajectory, timesteps=timesteps,
                                cfg=layout.mode)

    def write_outputs(self, manifest: dict, latent: torch.Tensor, out: Path, device) -> list[Path]:
        """The video latent always; a GIF per video when the model folder has Wan's VAE."""
        written = [save_latent(latent, out)]
        folder = vae_folder(manifest)
        if folder is not None:
            videos = decode_video(folder, latent, device)
            for i, frames in enumerate(videos):
                gif = out / ("video.gif" if len(videos) == 1 else f"video_{i}.gif")
                frames[0].save(gif, save_all=True, append_images=frames[1:], duration=62, loop=0)  # 16 fps, Wan's rate
                written.append(gif)
        return written

    def encode_prompts(self, folder: Path, prompts: list[str], text_len: int,
                       device) -> dict[str, torch.Tensor]:
        """Wan's UMT5 through WanPipeline.encode_prompt (as `Wan.conditioning`)."""
        from diffusers import WanPipeline

        pipe = WanPipeline.from_pretrained(folder, transformer=None, vae=None).to(device)
        with torch.no_grad():
            states, _ = pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False, num_videos_per_prompt=1,
                                           max_sequence_length=text_len, device=torch.device(device))
        del pipe
        return {"encoder_hidden_states": states.float().cpu()}

    def flops(self, config: dict, tokens: int, text_len: int, patch: int, residual: bool,
              batch: int = 1) -> dict:
        """Per-part FLOPs of one Wan engine call; ``total`` is their sum. Image-to-video adds the condition channels
        to the embedding and, with CLIP image embeddings, their embedder and every block's added K/V attention."""
        from ..families.wan import IMAGE_TOKENS, WAN

        d = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
        out_channels = WAN.latent_channels_of(config)
        n, t, ffn = tokens, text_len, int(config["ffn_dim"])
        f_in, f_out = int(config["in_channels"]) * patch * patch, out_channels * patch * patch
        images = WAN.image_embeds(config)
        m = images[0] * IMAGE_TOKENS if images else 0  # image tokens per video
        block = (lin(n, d, 3 * d) + attention(n, n, d) + lin(n, d, d)  # self-attention
                 + lin(n, d, d) + lin(t, d, 2 * d) + attention(n, t, d) + lin(n, d, d)  # cross-attention
                 + lin(n, d, ffn) + lin(n, ffn, d))
        if m:  # the image tokens' added K/V and their attention (same queries, output summed)
            block += lin(m, d, 2 * d) + attention(n, m, d)
        conditioning = (lin(1, int(config["freq_dim"]), d) + lin(1, d, d) + lin(1, d, 6 * d)
                        + lin(t, int(config["text_dim"]), d) + lin(t, d, d))
        if m:  # WanImageEmbedding: FeedForward(image_dim -> image_dim -> d)
            conditioning += lin(m, images[1], images[1]) + lin(m, images[1], d)
        parts = {
            "embed": lin(n, f_in, d),
            "conditioning": conditioning,
            "blocks": int(config["num_layers"]) * block,
            "output": lin(n, d, f_out),
            "ddit_residual": lin(n, f_out, f_out) if residual else 0,
        }
        return scaled(parts, batch)


WAN_PIPELINE = Wan()
