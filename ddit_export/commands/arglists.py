"""Comma-list arguments (`--seeds 0,1`, `--taus 1e-3,3e-3`), parsed one way for every command."""

from __future__ import annotations

from . import argtypes


def split_list(text: str, kind: type = int) -> list:
    """`"a,b,c"` -> values of `kind` (blank items skipped); ValueError on an item that is not one."""
    return [kind(v) for v in text.split(",") if v.strip()]


def comma_list(text: str, flag: str, kind: type = int, check=None) -> list:
    """`"a,b,c"` -> values of `kind`; a bad or empty list is one clear ValueError naming the flag.

    `check(value, flag)` (one of util/limits.py's) bounds every value."""
    try:
        values = split_list(text, kind)
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise ValueError(f"{flag} takes a comma list of {noun} (got {text!r})") from None
    if not values:
        raise ValueError(f"{flag} is empty")
    return [check(v, flag) for v in values] if check else values


def add_backend_argument(p, what: str = "engine runtime") -> None:
    """`--backend NAME`, its names and its check from the backend registry (runtime/backend_names.py)."""
    from ..runtime.backend_names import available_backends
    from . import argtypes

    p.add_argument("--backend", type=argtypes.backend, default="onnx", metavar="NAME",
                   help=f"{what}: {' | '.join(available_backends())} (default onnx)")


def add_schedule_arguments(p, steps_hint: str = "") -> None:
    """`--schedule SPEC` (a fixed schedule) and `--rule NAME` (the dynamic rule), the same on every command."""
    from ..runtime.rules import DEFAULT_RULE, RULES

    p.add_argument("--schedule", metavar="SPEC",
                   help="a fixed schedule instead of the dynamic rule: one size per step, e.g. 8x14,2x14 or "
                        f"2,2,4,4,... (its length is the step count{steps_hint})")
    p.add_argument("--rule", choices=sorted(RULES),
                   help=f"dynamic rule (default: the manifest's, else {DEFAULT_RULE}; docs/method.md compares them)")


def schedule_from_args(args, steps: int | None) -> tuple[int, ...] | None:
    """The parsed `--schedule` (None without it), checked against `steps` when that is known."""
    from ..runtime.schedule_spec import parse_schedule

    if not getattr(args, "schedule", None):
        return None
    schedule = parse_schedule(args.schedule)
    if steps is not None and len(schedule) != steps:
        raise ValueError(f"--schedule gives {len(schedule)} steps but --steps is {steps}: make them equal "
                         f"(or leave --steps out)")
    for flag in ("static", "tau", "sizes"):
        if getattr(args, flag, None) is not None:
            raise ValueError(f"--schedule fixes every step; it cannot be combined with --{flag}")
    return schedule


def add_cache_argument(p) -> None:
    """`--cache teacache:0.25 | fbcache:0.05 | none` (staged folders; runtime/cache/), the same on every command."""
    import argparse

    def cache(text: str):
        from ..runtime.cache.spec import parse_cache  # here, not at parser build: the package imports torch

        try:
            return parse_cache(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"--cache {text!r}: ")) from None

    p.add_argument("--cache", type=cache, metavar="KIND:T",
                   help="step caching on a staged folder: teacache:T (TeaCache, e.g. 0.25), fbcache:T (first-block "
                        "cache, e.g. 0.05) or none (default)")


def patch_list(text: str) -> tuple[int, ...]:
    """argparse type of --patch-sizes / --sizes: positive integers like 2,4,8."""
    import argparse

    try:
        sizes = tuple(split_list(text, int))
    except ValueError:
        raise argparse.ArgumentTypeError(f"patch sizes must be integers like 2,4,8 (got '{text}')") from None
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one patch size, e.g. 2,4")
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"patch sizes must be positive, like 2,4,8 (got '{text}')")
    return sizes


def read_engine_folder(engine_dir: str):
    """ENGINE_DIR argument -> (folder, its checked manifest): every command that reads engines starts here."""
    from pathlib import Path

    from ..artifacts.manifest import read_manifest

    folder = Path(engine_dir).expanduser()
    if not folder.is_dir():
        raise ValueError(f"ENGINE_DIR {folder} does not exist or is not a folder")
    return folder, read_manifest(folder)


def size_weights(text: str) -> dict[int, float]:
    """argparse type of --size-weights: `4=1,8=2` (size=weight) -> {4: 1.0, 8: 2.0}."""
    import argparse

    try:
        pairs = [item.split("=") for item in text.split(",") if item.strip()]
        weights = {int(size): float(weight) for size, weight in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"size weights look like 4=1,8=2 (size=weight; got '{text}')") from None
    if not weights:
        raise argparse.ArgumentTypeError("give a weight per trained size, e.g. 4=1,8=2")
    return weights
def add_bucket_arguments(p, what: str = "one of the folder's resolution buckets (default: its first)") -> None:
    p.add_argument("--height", type=argtypes.pixels, help=f"pixels: {what}; `ddit-export inspect` lists them")
    p.add_argument("--width", type=argtypes.pixels, help="pixels (with --height)")


def at_bucket(manifest, height: int | None, width: int | None):
    """The manifest of the bucket --height/--width ask (both or neither: the default) and its (h, w)."""
    if (height is None) != (width is None):
        raise ValueError("give --height and --width together (one of the folder's resolution buckets), or neither "
                         "for its default")
    view = manifest.at_bucket(height, width)
    return view, (view.bucket.height, view.bucket.width)
