"""Bounds for every numeric setting, checked before any heavy work (torch-free on purpose).

Each check raises one ValueError that names the flag and the accepted range. The command line
applies them while parsing (commands/argtypes.py) and the library applies them again to calls
from Python, so both paths refuse the same values with the same words. The upper bounds are far
beyond any real use; they exist so that a typo (`--steps 1000000000`, `--height 40000`) is refused
at once instead of dying minutes later inside an allocation or a tool's traceback.
"""

from __future__ import annotations

import math
import operator
import re

MAX_SIDE = 4096  # pixels per side: FLUX and Wan work up to about 2 MP
MAX_FRAMES = 1025
MAX_BATCH = 64
MAX_TEXT_LEN = 4096
MAX_STEPS = 10_000
MAX_SEED = 2**63 - 1  # torch generators take 64 bits; seeds + sample index must stay inside


def check_int(value, flag: str, low: int = 1, high: int | None = None) -> int:
    """An integer in [low, high]; bools and floats with a fraction are refused."""
    try:
        number = operator.index(value) if not isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{flag} takes an integer (got {value!r})") from None
    if isinstance(value, bool) or number < low or (high is not None and number > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{flag} must be an integer {bound} (got {value!r})")
    return number


def check_steps(value, flag: str = "steps") -> int:
    return check_int(value, flag, 1, MAX_STEPS)


def check_seed(value, flag: str = "--seed") -> int:
    return check_int(value, flag, 0, MAX_SEED)


def check_float(value, flag: str, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """A finite number within the given bounds (NaN and infinities are never settings)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{flag} takes a number (got {value!r})") from None
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or too_low or too_high:
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            parts.append(f"{'<' if high_open else '<='} {high:g}")
        rule = "a finite number" + (f" {' and '.join(parts)}" if parts else "")
        raise ValueError(f"{flag} must be {rule} (got {value!r})")
    return number


def check_tau(value, flag: str = "--tau") -> float:
    return check_float(value, flag, low=0.0)


def check_rho(value, flag: str = "--rho") -> float:
    return check_float(value, flag, low=0.0, high=1.0, low_open=True, high_open=True)


def check_resolutions(value) -> tuple[tuple[int, int], ...]:
    """"1024x1024,768x1344" (or pairs) -> ((1024, 1024), (768, 1344)); a bad spec is one ValueError."""
    items = [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else list(value)
    if not items:
        raise ValueError("--resolutions takes HEIGHTxWIDTH pairs separated by commas, e.g. 1024x1024,768x1344")
    buckets = []
    for item in items:
        if isinstance(item, str):
            match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", item)
            if not match:
                raise ValueError(f"--resolutions: {item!r} is not HEIGHTxWIDTH (e.g. 1024x1024,768x1344)")
            item = match.groups()
        if len(item) != 2:
            raise ValueError(f"--resolutions: {item!r} is not a (height, width) pair")
        buckets.append((check_int(item[0], "--resolutions height", high=MAX_SIDE),
                        check_int(item[1], "--resolutions width", high=MAX_SIDE)))
    repeated = sorted({f"{b[0]}x{b[1]}" for b in buckets if buckets.count(b) > 1})
    if repeated:
        raise ValueError(f"--resolutions lists {', '.join(repeated)} twice; give each bucket once")
    return tuple(buckets)
