"""`ddit-export generate`: run a full denoising loop on exported engines with DDiT scheduling.

Writes into --out: `image.png` when the engines' model is a diffusers pipeline folder with a VAE
(else the final latent as `latent.npy`) and always `trace.json` (per step: patch size, scheduler
statistics, seconds). `--save-trajectory FILE.npz` also saves every sampler latent.

Wan engines: always the final video latent `latent.npy` (`B x 16 x F x h x w`), plus `video.gif`
(`video_<i>.gif` per video) when the model folder has an `AutoencoderKLWan` in `vae/`. `--guidance`
is the classifier-free guidance scale (default 5.0, 1 disables it); engines exported with twice
the video batch (`--batch 2`) run cond and uncond in one call per step, others make two calls.
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..util.atomic import atomic_file, check_writable, check_writable_file, staged_files
from ..util.devices import parse_device
from . import argtypes
from .arglists import (
    add_backend_argument,
    add_bucket_arguments,
    add_cache_argument,
    add_schedule_arguments,
    at_bucket,
    patch_list,
    read_engine_folder,
    schedule_from_args,
)
from .errors import run_guarded
from .progress import Counted
from .prompts import DEFAULT_PROMPT

DEFAULT_STEPS = 50


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("engine_dir", metavar="ENGINE_DIR", help="engine folder (holds manifest.json)")
    p.add_argument("--prompt",
                   help="text prompt (models without text encoders get synthetic embeddings seeded from it; "
                        f"the demo engines take one of their class names); default {DEFAULT_PROMPT!r}")
    p.add_argument("--seed", type=argtypes.seed, default=0, help="noise seed (default 0)")
    p.add_argument("--steps", type=argtypes.steps, help="denoising steps (default 50, or the length of --schedule)")
    p.add_argument("--tau", type=argtypes.tau, help="scheduler threshold (default: the manifest's calibration)")
    p.add_argument("--rho", type=argtypes.rho, help="scheduler percentile as a fraction (default: the manifest's)")
    add_backend_argument(p)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--static", type=argtypes.positive_int, metavar="P",
                   help="run every step at patch size P (no scheduling)")
    p.add_argument("--sizes", type=patch_list, metavar="2,4",
                   help="patch sizes the scheduler may pick, the base included (default: every engine's)")
    p.add_argument("--warmup-patch", type=argtypes.positive_int, metavar="P",
                   help="size for the first 3 steps (default: the base)")
    p.add_argument("--base-last-steps", type=argtypes.non_negative_int, default=0, metavar="N",
                   help="force the base size for the last N steps")
    p.add_argument("--base-first-steps", type=argtypes.non_negative_int, metavar="N",
                   help="force the base size for the first N steps, then the rule (default: the manifest's, "
                        "else 0; docs/quality.md: a base opening keeps the distribution)")
    p.add_argument("--settle-steps", type=argtypes.non_negative_int, metavar="N",
                   help="keep a newly chosen size N more steps, so decisions never read a third difference "
                        "spanning an engine switch (default: the manifest's, else 0 = the paper's rule)")
    add_schedule_arguments(p)
    add_cache_argument(p)
    p.add_argument("--guidance", type=argtypes.non_negative_float,
                   help="FLUX: embedded guidance scale (default 3.5 when the model has one); "
                        "Wan: classifier-free guidance scale (default 5.0; 1 disables CFG)")
    p.add_argument("--negative-prompt", default="",
                   help="Wan with CFG: the negative prompt (default empty, as WanPipeline)")
    p.add_argument("--image", metavar="FILE",
                   help="FLUX.1-Depth/Canny: the control image; FLUX.1-Fill: the image to fill (with --mask); "
                        "FLUX.1-Kontext: the reference image (docs/variants.md); Wan image-to-video: the first frame")
    p.add_argument("--mask", metavar="FILE", help="FLUX.1-Fill: the mask, white where the image is repainted")
    p.add_argument("--last-image", metavar="FILE",
                   help="Wan first-last-frame (FLF2V) engines: the video's last frame (docs/variants-wan.md)")
    add_bucket_arguments(p)
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="a user LoRA (diffusers/peft or kohya FLUX safetensors) at SCALE (default 1.0), applied to "
                        "the staged trunk without re-export; repeat for several (docs/loras.md)")
    p.add_argument("--out", help="output folder (default outputs/<engine dir>-seed<seed>)")
    p.add_argument("--save-trajectory", metavar="FILE.npz",
                   help="save the sampler latent before each step and the final one as array 'latents'")


def run(args: argparse.Namespace) -> int:
    return run_guarded(lambda: generate_command(args, Console(highlight=False)))


def _checked_prompt(prompt: str | None, pipeline) -> str:
    """The prompt to condition on; a pipeline that knows only some prompts (the demo's class names) refuses
    other text (it would silently sample noise from made-up embeddings)."""
    if prompt is None:
        return pipeline.default_prompt or DEFAULT_PROMPT
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # undecodable argv bytes arrive as lone surrogates
        raise ValueError("--prompt is not valid UTF-8 text; check the terminal's or the script's encoding") from None
    return pipeline.check_prompt(prompt)


def _pipeline(args, manifest):
    """The one pipeline lookup of a `generate` run."""
    from ..pipelines.registry import FAMILY_PIPELINES, pipeline_for

    if manifest.get("family") not in FAMILY_PIPELINES:
        family = manifest.get("family")
        raise ValueError(f"generate runs {' and '.join(sorted(FAMILY_PIPELINES))} engines; {args.engine_dir} "
                         f"holds {family} engines")
    return pipeline_for(manifest)


def _check_args(args, manifest: dict, pipeline):
    """Everything that can be refused before loading engines and that argparse could not (it already bounded
    each number, commands/argtypes.py); returns the device."""
    from ..runtime.backends import backend_class

    args.prompt = _checked_prompt(args.prompt, pipeline)
    if pipeline.teacher.guidance == "cfg" and args.guidance is not None and not args.guidance > 0:
        raise ValueError(f"--guidance is Wan's CFG scale and must be > 0 (1 disables CFG); got {args.guidance}")
    _check_images(args, manifest, pipeline)
    backend_class(args.backend)  # unknown name -> the list of backends
    args.fixed = schedule_from_args(args, args.steps)
    if args.steps is None:
        args.steps = len(args.fixed) if args.fixed else DEFAULT_STEPS
    sizes = list(manifest.patch_sizes)
    for flag, value in (("--static", args.static), ("--warmup-patch", args.warmup_patch)):
        if value is not None and value not in sizes:
            raise ValueError(f"{flag} {value} is not a patch size of these engines (they have {sizes})")
    if not 0 <= args.base_last_steps <= args.steps:
        raise ValueError(f"--base-last-steps must be between 0 and --steps ({args.steps}), got {args.base_last_steps}")
    if args.base_first_steps is not None and args.base_first_steps > args.steps:
        raise ValueError(f"--base-first-steps must be between 0 and --steps ({args.steps}), "
                         f"got {args.base_first_steps}")
    args.loras = _checked_loras(args.lora, manifest)
    return parse_device(args.device)


def _check_images(args, manifest: dict, pipeline) -> None:
    """--image/--mask: refused by pipelines that take none; checked against the model by those that do."""
    import inspect

    given = [f for f in ("image", "mask", "last_image") if getattr(args, f, None) is not None]
    takes = inspect.signature(pipeline.conditioning).parameters
    for flag in given:
        if flag not in takes:
            raise ValueError(f"--{flag.replace('_', '-')} does not apply to {manifest.get('family')} engines of model "
                             f"{manifest.model_id}; drop it")
    if "image" in takes and hasattr(pipeline, "check_images"):  # before any engine is loaded
        last = {"last_image": args.last_image} if getattr(args, "last_image", None) else {}  # Wan FLF2V
        pipeline.check_images(manifest, args.image, args.mask, **last)


def _checked_loras(values: list[str], manifest) -> list:
    """--lora FILE[:SCALE] as LoraSpecs; a single-layout folder is refused before loading engines."""
    from ..runtime.loras import LoraError, parse_lora_arg

    specs = [parse_lora_arg(v) for v in values]
    if specs and manifest.layout != "staged":
        raise LoraError("--lora needs a staged folder (one shared trunk the LoRA is written into); this one is "
                        "single-layout: re-export it with --layout staged (docs/loras.md)")
    for spec in specs:
        if not spec.path.is_file():
            raise LoraError(f"--lora {spec.path}: no such file (FILE[:SCALE], e.g. style.safetensors:0.8)")
    return specs


def generate_command(args: argparse.Namespace, console: Console) -> int:
    from ..runtime.backends import get_backend
    from ..runtime.runner import schedule_config

    folder, manifest = read_engine_folder(args.engine_dir)
    manifest, bucket = at_bucket(manifest, args.height, args.width)
    pipeline = _pipeline(args, manifest)
    device = _check_args(args, manifest, pipeline)
    out = Path(args.out).expanduser() if args.out else Path("outputs") / f"{folder.resolve().name}-seed{args.seed}"
    check_writable(out)  # before sampling: a read-only or missing disk is refused at once
    if args.save_trajectory:
        check_writable_file(Path(args.save_trajectory).expanduser(), "--save-trajectory")

    with get_backend(args.backend, folder, device=device, bucket=bucket, manifest=manifest,
                     loras=args.loras) as backend:
        config = schedule_config(
            backend, tau=args.tau, rho=args.rho, static_patch=args.static, warmup_patch=args.warmup_patch,
            base_last_steps=args.base_last_steps, base_first_steps=args.base_first_steps,
            settle_steps=args.settle_steps, patch_sizes=args.sizes,
            schedule=args.fixed, rule=args.rule,
        )
        cache = None
        if args.cache is not None:
            from ..runtime.cache import StepCache

            cache = StepCache(backend, args.cache)  # a single-layout folder is refused here, with the fix
        if args.loras:
            console.print("LoRAs: " + ", ".join(f"{s.name} x{s.scale:g}" for s in args.loras)
                          + f" (applied in {backend.lora_swap_seconds:.2f} s)")
        images = {k: v for k, v in (("image", args.image), ("mask", args.mask), ("last_image", args.last_image)) if v}
        images = {**images, "seed": args.seed} if images else {}
        conditioning = pipeline.conditioning(manifest, args.prompt, args.guidance, device, args.negative_prompt,
                                             **images)
        style = "yellow" if conditioning.synthetic else "green"
        console.print(f"conditioning: [{style}]{conditioning.source}[/]")
        with Counted(console, args.steps, "sampling", unit="step") as bar:
            result = pipeline.generate(backend, conditioning, config, steps=args.steps, seed=args.seed,
                              return_trajectory=bool(args.save_trajectory),
                              on_step=lambda _, patch: bar.advance(status=f"p{patch}"), cache=cache)
        if result.cfg is not None:  # Wan: say how the guidance passes ran (one call or two per step)
            console.print(f"classifier-free guidance: {result.cfg} (scale {conditioning.guidance})")

    trace = result.trace
    trajectory = Path(args.save_trajectory).expanduser() if args.save_trajectory else None
    # every output or none: a full disk leaves no half-written folder, and no --out without its trajectory
    with _trajectory_file(trajectory, result), staged_files(out) as staging:
        written = pipeline.write_outputs(manifest, result.latent, staging, device)
        record = {
            "engine_dir": str(folder), "backend": args.backend, "device": str(device), "dtype": manifest.dtype,
            "resolution": manifest.bucket.name,
            "prompt": args.prompt, "conditioning": conditioning.source, "seed": args.seed, "num_steps": args.steps,
            **config.to_json(), "fixed_schedule": args.schedule,
            "timesteps": result.timesteps.float().cpu().tolist(),
            "cache": cache.describe() if cache is not None else None,
            "loras": [spec.to_json() for spec in args.loras],
            **_wan_record(args, conditioning, result),
            **_experts_record(manifest, result),
            **trace.to_json(),
        }
        (staging / "trace.json").write_text(json.dumps(record, indent=1) + "\n")
        written = [out / p.name for p in [*written, staging / "trace.json"]] + ([trajectory] if trajectory else [])
    _print_summary(console, trace, written)
    return 0


def _experts_record(manifest, result) -> dict:
    """Two-expert folders (Wan 2.2 A14B): the expert of every step, by WanPipeline's boundary rule."""
    experts = manifest.get("experts")
    if not experts:
        return {}
    boundary = float(experts["boundary_timestep"])
    steps = ["transformer" if t >= boundary else experts["second"] for t in result.timesteps.float().cpu().tolist()]
    return {"boundary_timestep": boundary, "experts": steps}


@contextmanager
def _trajectory_file(path: Path | None, result):
    """The --save-trajectory file: written on entry (before --out is committed), published on exit (after it),
    so a trajectory that cannot be written leaves --out as it was."""
    if path is None:
        yield
        return
    import numpy as np

    with atomic_file(path) as tmp:
        try:
            with open(tmp, "wb") as fh:
                # float32: numpy has no bfloat16, and a trajectory is for analysis, not for bit-exact replay.
                np.savez(fh, latents=result.trajectory.float().cpu().numpy(),
                         schedule=np.array(result.trace.schedule))
        except OSError as err:  # a write through the handle names no file: name the one the user gave
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        yield


def _wan_record(args, conditioning, result) -> dict:
    """Wan-only trace.json keys (FLUX's record is unchanged): the CFG scale and how it ran."""
    if result.cfg is None:
        return {}
    negative = args.negative_prompt if result.cfg != "off" else None
    return {"guidance_scale": conditioning.guidance, "cfg": result.cfg, "negative_prompt": negative}


def _print_summary(console: Console, trace, written: list[Path]) -> None:
    schedule = trace.schedule
    console.print(f"schedule ({len(schedule)} steps): [bold]{' '.join(str(p) for p in schedule)}[/]")
    counts = {p: schedule.count(p) for p in sorted(set(schedule))}
    console.print("steps per patch size: " + ", ".join(f"p{p}: {n}" for p, n in counts.items()))
    if any(trace.cached):
        console.print(f"served from the step cache: {sum(trace.cached)} of {len(schedule)} steps "
                      f"({' '.join('c' if c else '.' for c in trace.cached)})")
    totals = trace.totals()
    table = Table(title="where the time went")
    for col in ("part", "seconds", "share"):
        table.add_column(col, justify="left" if col == "part" else "right")
    whole = totals["seconds"] or 1.0
    for name, key in (("scheduler", "scheduler_seconds"), ("engine", "engine_seconds"), ("rest", "rest_seconds")):
        table.add_row(name, f"{totals[key]:.4f}", f"{100 * totals[key] / whole:.1f}%")
    table.add_row("total", f"{totals['seconds']:.4f}", "100%", style="bold")
    console.print(table)
    for path in written:
        console.print(f"wrote {path}")
