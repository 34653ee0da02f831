"""The distillation run: load, attach DDiT, collect data, optimise, checkpoint, write the adapter pack.

Runs unchanged under `accelerate launch` (data parallel): accelerate wraps the objective, optimizer
and loader; each process draws its own batches of one global, position-seeded stream; only the
main process writes files. `--dtype bf16` keeps the frozen backbone in bf16 and runs the forward
under autocast, while the trained parameters and optimizer state stay fp32.
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..ddit.loading import LoadedModel, load_ddit_model
from ..ddit.model import DDiTModel
from ..pipelines.flux import shift_mu  # clean latents are the FLUX image path (`train --images`)
from ..pipelines.registry import teacher_pipeline
from .checkpoint import load_checkpoint, newest_checkpoint, read_state, save_checkpoint
from .config import TrainConfig
from .data import SampleSet, SampleStream, model_inputs
from .objective import DistillationObjective, freeze_for_distillation
from .optim import lr_factor, make_optimizer
from .outputs import prepare_out, publish_pack, write_train_log
from .recompute import enable_gradient_checkpointing
from .rollouts import mix_states
from .sources import build_samples, guidance_for, student_samples
from .trajectories import base_tokens, call_conditions, timestep_like_pipeline
from .validation import held_out_loss, split_by_prompt


@dataclass
class TrainResult:
    out: Path
    model: DDiTModel  # the trained model (unwrapped), on the training device
    samples: SampleSet
    log: list[dict] = field(default_factory=list)  # one entry per step, resumed steps included
    resumed_from: int | None = None
    seconds: float = 0.0
    main_process: bool = True  # False on the other ranks of a data-parallel run


def say(message: str) -> None:
    """Default status printer (the CLI passes its own)."""
    print(message, file=sys.stderr)


def quiet(_message: str) -> None:
    """Status printer of the other processes under `accelerate launch`: one voice is enough."""


def check_resumable(saved: dict, config: TrainConfig, checkpoint: Path) -> None:
    current = config.identity()
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:4])
        raise ValueError(f"--resume: {checkpoint} was trained with other settings ({details}); "
                         "use the original arguments (only --steps and checkpointing may change)")


def noise_shift(config: TrainConfig, samples: SampleSet) -> float | None:
    """Shift of the noise levels drawn for clean latents (FLUX's image path); trajectories carry their own t."""
    if not samples.clean:
        return None
    fam = config.family_obj
    return shift_mu(teacher_pipeline(fam).sampler(config.model), base_tokens(fam, config.latent_shape()))


def step_inputs(batch: dict, seed: int, mu: float | None, guidance, names, family, dtype, device) -> tuple:
    """(z_t, conditioning with timestep) for one batch, in the dtypes the family's pipeline would pass."""
    latent, timestep = model_inputs(batch, seed, mu, family.timestep_scale)
    latent = latent.to(dtype)
    conditioning = call_conditions({k: batch[k] for k in names}, guidance, latent.shape[0], dtype, device)
    conditioning["timestep"] = timestep_like_pipeline(timestep, latent.dtype, family)
    return latent, conditioning


def build_model(config: TrainConfig, device) -> LoadedModel:
    """The teacher with DDiT modules to train, through the one loader (`ddit/loading.py`): in the training
    dtype and LoRA rank, continuing from `--init-adapters` (its rank and sizes must fit; one clear error
    otherwise). `config` is not changed; what the load learned (latent channels, ...) is in the result."""
    loaded = load_ddit_model(config.family_obj, config.model, config.patch_sizes, config.init_adapters,
                             dtype=config.torch_dtype, lora_rank=config.lora_rank)
    grid = [name for name, _ in config.family_obj.grid_specs(loaded.model.config, (1, 1, 2, 2))]
    if grid:  # the teacher trajectories and the sample sets carry no control image, mask or reference
        raise ValueError(f"training DDiT adapters for models with conditioning on the latent grid ({', '.join(grid)}"
                         ": FLUX Depth/Canny, Fill, Kontext, Wan I2V) is not supported yet; export them untrained "
                         "(docs/variants.md)")
    loaded.model.train().to(device)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(loaded.model.transformer)
    return loaded


def train(config: TrainConfig, status=say) -> TrainResult:
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    started = time.perf_counter()
    out = config.out_dir
    # Mixed precision is ours (autocast below), not accelerate's: the trained parameters stay fp32.
    accelerator = Accelerator(mixed_precision="no")
    main = accelerator.is_main_process
    status = status if main else quiet
    if main:
        prepare_out(out, config.resume, config.overwrite)
    accelerator.wait_for_everyone()
    device = accelerator.device
    bf16 = config.dtype == "bf16"
    autocast = partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16) if bf16 else nullcontext

    model = build_model(config, device).model
    trainable = freeze_for_distillation(model)
    status(f"model {config.model}: training sizes {model.extra_sizes} against the base {model.base_patch} "
           f"({sum(p.numel() for p in trainable):,} parameters, LoRA rank {config.lora_rank}, {config.dtype})")

    show = main and sys.stderr.isatty()
    with tqdm(total=None, desc="teacher data", disable=not show, leave=False) as bar:
        samples = build_samples(config, model, device, autocast, progress=bar.update)
    samples, held = split_by_prompt(samples, config.validation_share, config.seed)
    status(f"data: {len(samples)} samples: {samples.source}")

    optimizer = make_optimizer(config.optimizer, trainable, config.lr, config.weight_decay)
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # before a checkpoint overwrites them
    start, position, log, resumed_from = 0, 0, [], None
    if config.resume:
        checkpoint = newest_checkpoint(out)
        check_resumable(read_state(checkpoint)["identity"], config, checkpoint)
        state = load_checkpoint(checkpoint, model, optimizer)
        start, position, log, resumed_from = state["step"], state["position"], state["log"], state["step"]
        status(f"resuming from {checkpoint} (step {start})")

    # One global stream of sample positions; a step takes the next `global_batch` of them (accelerate
    # hands each process its own `batch_size` slice). The saved position, not step * batch, is where
    # a resumed run continues, so it may even use another number of processes.
    global_batch = config.batch_size * accelerator.num_processes
    stream = SampleStream(samples, config.seed, length=position + max(0, config.steps - start) * global_batch)
    loader = DataLoader(stream, batch_size=config.batch_size, sampler=range(position, len(stream)))
    objective = DistillationObjective(model, spectral_weight=config.spectral_weight)
    objective, optimizer, loader = accelerator.prepare(objective, optimizer, loader)
    inputs = partial(step_inputs, seed=config.seed, mu=noise_shift(config, samples),
                     guidance=guidance_for(model, config), names=list(samples.conditions), family=model.family,
                     dtype=config.torch_dtype, device=device)
    sizes = model.extra_sizes
    weights = torch.tensor([(config.size_weights or {}).get(p, 1.0) for p in sizes], device=device)
    teacher_samples = samples

    def refresh_student_states(step: int) -> None:
        """Roll the current student out and mix its states into the stream (rollouts.py)."""
        nonlocal samples
        tick = time.perf_counter()
        student = student_samples(config, model, teacher_samples, device, autocast)
        samples = mix_states(teacher_samples, student, config.student_states, config.seed, step // config.rollout_every)
        stream.replace(samples)
        status(f"step {step}: student states refreshed ({len(samples) - len(teacher_samples)} of {len(samples)} "
               f"samples, {time.perf_counter() - tick:.0f} s)")

    if config.student_states and start >= config.rollout_every and start < config.steps:
        refresh_student_states(start)  # a resumed run rolls out its restored student

    def save(step: int) -> None:
        if main:
            state = {"position": position + (step - start) * global_batch, "log": log, "identity": config.identity()}
            save_checkpoint(out, step, accelerator.unwrap_model(objective).model, optimizer, state,
                            config.model, config.keep_checkpoints)
        accelerator.wait_for_everyone()

    objective.train()
    batches = iter(loader)
    every = max(1, config.steps // 20)
    with tqdm(total=config.steps, initial=start, desc="distill", disable=not show, dynamic_ncols=True) as bar:
        for step in range(start + 1, config.steps + 1):
            if config.student_states and step > 1 and (step - 1) % config.rollout_every == 0 and step - 1 > start:
                refresh_student_states(step - 1)
            tick = time.perf_counter()
            latent, conditioning = inputs(next(batches))
            with autocast():
                losses = objective(latent, conditioning)
            # per-size weights (--size-weights), the spectral term (--spectral-weight)
            accelerator.backward(accelerator.unwrap_model(objective).training_loss(losses, weights))
            factor = lr_factor(config.lr_schedule, step, config.steps)
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base_lr * factor
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            reduced = accelerator.reduce(losses.detach(), reduction="mean").tolist()
            per_size, spectral = (reduced, None) if losses.dim() == 1 else reduced
            log.append({"step": step, "loss": sum(per_size),
                        "loss_per_size": {str(p): v for p, v in zip(sizes, per_size)},
                        "seconds": round(time.perf_counter() - tick, 4)})
            if spectral is not None:
                log[-1]["spectral_per_size"] = {str(p): v for p, v in zip(sizes, spectral)}
            report = step % every == 0 or step == config.steps
            held_text = ""
            if held is not None and report:  # --validation-share: the same held-out samples at every check
                held_loss = held_out_loss(objective, held, inputs, config.batch_size, autocast, config.seed)
                if config.spectral_weight:
                    held_loss, held_spectral = held_loss
                    log[-1]["held_out_spectral_per_size"] = {str(p): v for p, v in zip(sizes, held_spectral)}
                log[-1]["held_out_loss_per_size"] = {str(p): v for p, v in zip(sizes, held_loss)}
                held_text = ", held out " + " ".join(f"p{p} {v:.4g}" for p, v in zip(sizes, held_loss))
            bar.update()
            bar.set_postfix(loss=f"{sum(per_size):.4g}")
            if not show and report:  # logs and pipes get lines, not a bar
                status(f"step {step}/{config.steps}: loss {sum(per_size):.4g}{held_text} "
                       f"({time.perf_counter() - started:.0f} s since start)")
            elif held_text:
                bar.write(f"step {step}: loss {sum(per_size):.4g}{held_text}")
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                save(step)
    if config.checkpoint_every and config.steps > start and config.steps % config.checkpoint_every:
        save(config.steps)  # the end state too, so a later `--resume --steps MORE` can extend the run

    trained = accelerator.unwrap_model(objective).model
    seconds = time.perf_counter() - started
    if main:
        publish_pack(trained, out, base_model=config.model)
        write_train_log(out, {
            "family": config.family, "model": config.model, "patch_sizes": list(config.patch_sizes),
            "trained_sizes": sizes, "data": samples.source, "samples": len(samples), "steps": config.steps,
            "resumed_from": resumed_from, "processes": accelerator.num_processes, "config": config.identity(),
            "seconds": round(seconds, 3), "log": log,
        })
    accelerator.wait_for_everyone()
    return TrainResult(out=out, model=trained, samples=samples, log=log, resumed_from=resumed_from, seconds=seconds,
                       main_process=main)
