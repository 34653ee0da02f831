"""`ddit-export train {flux,wan}`: distil DDiT adapters (per extra patch size) from the frozen base model.

Writes an adapter pack into --out (what `ddit-export {flux,wan} --adapters OUT` consumes), a
`train_log.json`, and with --checkpoint-every N resumable checkpoints under OUT/checkpoints/.
Runs unchanged under `accelerate launch -m ddit_export.cli train ...` for data-parallel training.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from ..families.defaults import FAMILY_DEFAULTS
from . import argtypes
from .arglists import patch_list, size_weights
from .errors import run_guarded

FAMILIES = list(FAMILY_DEFAULTS)  # every family (plain data: the help costs no torch import)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("family", choices=FAMILIES, help="model family")
    p.add_argument("--model", default=None,
                   help="'tiny' | 'medium' | 'smoke' (random weights), a diffusers pipeline/transformer folder, "
                        "or a model id in the local HF cache (default FLUX.1-dev / Wan2.1-T2V-1.3B)")
    p.add_argument("--patch-sizes", type=patch_list, default=(2, 4, 8),
                   help="base size and the sizes to train, in latent pixels (default 2,4,8)")
    p.add_argument("--out", required=True, help="output folder: the adapter pack, train_log.json, checkpoints/")
    data = p.add_argument_group("data (give one of --images, --prompts, --prompt-embeds)")
    data.add_argument("--images", metavar="DIR",
                      help="FLUX only: image folder, encoded with --vae; NAME.txt beside an image is its prompt")
    data.add_argument("--vae",
                      help="AutoencoderKL folder or diffusers pipeline folder (default: --model's, if a pipeline)")
    data.add_argument("--prompts", metavar="FILE",
                      help="data-free: one prompt per line; samples are the teacher's own trajectories")
    data.add_argument("--prompt-embeds", metavar="FILE", help="data-free with precomputed embeddings: safetensors with "
                      "encoder_hidden_states [N,T,D] (FLUX also pooled_projections [N,D]; Wan with --guidance > 1 "
                      "also negative_encoder_hidden_states [1 or N,T,D])")
    data.add_argument("--teacher-steps", type=argtypes.steps, default=None,
                      help="sampling steps per trajectory (default: the pipeline's, 28 FLUX, 50 Wan)")
    data.add_argument("--draws-per-prompt", type=argtypes.positive_int, default=1, metavar="K",
                      help="teacher trajectories per prompt, each from its own noise seed: K times the samples "
                           "from the same prompts (default 1; docs/method.md, Distillation recipe)")
    data.add_argument("--guidance", type=argtypes.non_negative_float, default=None,
                      help="FLUX: embedded guidance scale (default 3.5); Wan: classifier-free guidance of the "
                           "teacher's trajectories with the negative prompt '' (default 1 = off; 5 as WanPipeline)")
    data.add_argument("--height", type=argtypes.pixels, default=None,
                      help="pixels (default 1024 FLUX, 480 Wan; the tiny preset 128 FLUX, 96 Wan)")
    data.add_argument("--width", type=argtypes.pixels, default=None,
                      help="pixels (default 1024 FLUX, 832 Wan; the tiny preset 128 FLUX, 160 Wan)")
    data.add_argument("--frames", type=argtypes.frames, default=None,
                      help="Wan only: video frames, 4k+1 (default 81; the tiny preset 5)")
    data.add_argument("--text-len", type=argtypes.text_len, default=None, help="text tokens for prompts (default 512)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--steps", type=argtypes.positive_int, default=1000, help="optimisation steps (default 1000)")
    opt.add_argument("--batch-size", type=argtypes.batch, default=1, help="samples per step and process (default 1)")
    opt.add_argument("--seed", type=argtypes.seed, default=0,
                     help="seeds the sample order and the teacher's noise: trajectory r starts from noise seed "
                          "SEED + r (as `generate --seed`), so a run meant to see NEW trajectories needs a seed "
                          "at least prompts x draws away from the last run's (default 0)")
    opt.add_argument("--lora-rank", type=argtypes.positive_int, default=32)
    opt.add_argument("--init-adapters", metavar="PACK", help="start from this adapter pack (same rank and sizes), "
                     "e.g. after fine-tuning the base model")
    opt.add_argument("--optimizer", choices=("adamw", "prodigy"), default="adamw",
                     help="adamw (default) or prodigy (needs `pip install prodigyopt`)")
    opt.add_argument("--lr", type=argtypes.positive_float, default=None,
                     help="learning rate (default 1e-4 AdamW, 1.0 Prodigy)")
    opt.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                     help="constant (default) or cosine: 5%% warm-up, then decay to 10%% of --lr")
    opt.add_argument("--weight-decay", type=argtypes.non_negative_float, default=0.0)
    opt.add_argument("--dtype", choices=("fp32", "bf16"), default=None,
                     help="frozen backbone dtype; bf16 runs under autocast with fp32 trained weights "
                          "(default bf16 on a GPU, fp32 on a CPU)")
    opt.add_argument("--gradient-checkpointing", action="store_true", help="recompute block activations (less memory)")
    recipe = p.add_argument_group("what the student learns from (docs/method.md, Distillation recipe)")
    recipe.add_argument("--student-states", type=argtypes.non_negative_float, default=0.0, metavar="F",
                        help="share of the samples taken from the student's own DDiT trajectories (states that "
                             "drift from the teacher's), the teacher still the target; 0 = teacher states only "
                             "(default 0; 0.5 in the recipe)")
    recipe.add_argument("--rollout-every", type=argtypes.positive_int, default=None, metavar="N",
                        help="--student-states: roll the current student out again every N steps "
                             "(default --steps / 4; the first rollouts after N steps)")
    recipe.add_argument("--size-weights", type=size_weights, default=None, metavar="P=W,...",
                        help="loss weight per trained size, e.g. 4=1,8=2 (default 1 each; with adamw only 0 changes "
                             "anything: docs/method.md)")
    recipe.add_argument("--spectral-weight", type=argtypes.non_negative_float, default=0.0, metavar="W",
                        help="add W x the log distance between the radial power spectra of the student's and the "
                             "teacher's predicted clean latents: asks the coarse sizes for the teacher's amount of "
                             "fine detail, which velocity MSE smooths away (default 0: MSE only; docs/method.md)")
    recipe.add_argument("--validation-share", type=argtypes.non_negative_float, default=0.0, metavar="F",
                        help="hold this share of the prompts (their whole trajectories) out of training and log the "
                             "students' loss on them: held-out loss says whether a lower training loss generalises "
                             "(default 0: none held out)")
    run_group = p.add_argument_group("run")
    run_group.add_argument("--checkpoint-every", type=argtypes.non_negative_int, default=500, metavar="N",
                           help="save a resumable checkpoint every N steps, 0 = never (default 500)")
    run_group.add_argument("--keep-checkpoints", type=argtypes.positive_int, default=2,
                           help="newest checkpoints kept (default 2)")
    run_group.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    run_group.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out and start over")


def config_from_args(args: argparse.Namespace):
    from ..train.config import TrainConfig

    return TrainConfig(
        out=args.out, family=args.family, model=args.model, patch_sizes=args.patch_sizes,
        images=args.images, vae=args.vae, prompts=args.prompts, prompt_embeds=args.prompt_embeds,
        teacher_steps=args.teacher_steps, draws_per_prompt=args.draws_per_prompt, guidance=args.guidance,
        height=args.height, width=args.width,
        frames=args.frames, text_len=args.text_len, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
        lora_rank=args.lora_rank, init_adapters=args.init_adapters,
        optimizer=args.optimizer, lr=args.lr, lr_schedule=args.lr_schedule,
        weight_decay=args.weight_decay,
        dtype=args.dtype, gradient_checkpointing=args.gradient_checkpointing,
        student_states=args.student_states, rollout_every=args.rollout_every, size_weights=args.size_weights,
        spectral_weight=args.spectral_weight, validation_share=args.validation_share,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        resume=args.resume, overwrite=args.overwrite,
    )


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True, highlight=False)

    def body():
        from ..train.distill import train

        config = config_from_args(args)
        result = train(config, status=console.print)
        if not result.main_process:
            return
        if result.resumed_from is not None and result.resumed_from >= config.steps:
            console.print(f"nothing to train: the newest checkpoint is at step {result.resumed_from} >= --steps")
        if result.log:
            last = result.log[-1]
            sizes = ", ".join(f"p{p} {v:.4g}" for p, v in last["loss_per_size"].items())
            held = last.get("held_out_loss_per_size")
            held = "; held out " + ", ".join(f"p{p} {v:.4g}" for p, v in held.items()) if held else ""
            console.print(f"step {last['step']}: loss {last['loss']:.4g} ({sizes}{held}); {result.seconds:.1f} s")
        console.print(f"adapter pack: {result.out} (use: ddit-export {config.family} --adapters {result.out})")

    return run_guarded(body)
