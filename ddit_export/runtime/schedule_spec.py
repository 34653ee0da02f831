"""Fixed schedules written as text: ``8x14,2x14`` (run-length) or ``2,2,2,4,4`` (one size per step).

Both forms mix: ``2x3,4,4,2x2``. A fixed schedule is what production deployments pin for
determinism, and the baseline every dynamic rule must beat at the same cost (`ddit-export schedules`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

__all__ = ["format_schedule", "parse_schedule", "check_schedule"]

MAX_STEPS = 10_000  # a sampler of more steps than this is a typo, not a schedule


def parse_schedule(text: str, flag: str = "--schedule") -> tuple[int, ...]:
    """``"8x14,2x14"`` -> (8,)*14 + (2,)*14; one clear ValueError naming ``flag`` otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{flag} is empty: give sizes per step, e.g. 8x14,2x14 or 2,2,4,4")
    sizes: list[int] = []
    for item in text.replace(" ", "").split(","):
        size, _, count = item.partition("x")
        try:
            p, n = int(size), int(count) if count else 1
        except ValueError:
            raise ValueError(f"{flag}: {item!r} is not SIZE or SIZExSTEPS (e.g. 8x14,2x14 or 2,2,4,4)") from None
        if p < 1 or n < 1:
            raise ValueError(f"{flag}: {item!r} needs a positive size and step count")
        sizes.extend([p] * n)
        if len(sizes) > MAX_STEPS:
            raise ValueError(f"{flag} has more than {MAX_STEPS} steps")
    return tuple(sizes)


def check_schedule(schedule: Sequence[int], sizes: Sequence[int], steps: int | None, flag: str = "--schedule") -> None:
    """Sizes among the engines' (``sizes``) and, when ``steps`` is known, one size per step."""
    unknown = sorted(set(schedule) - set(sizes))
    if unknown:
        raise ValueError(f"{flag} uses patch size(s) {unknown}; the engines have {sorted(sizes)}")
    if steps is not None and len(schedule) != steps:
        raise ValueError(f"{flag} gives {len(schedule)} steps ({format_schedule(schedule)}) but sampling runs "
                         f"{steps}: make them equal (e.g. --steps {len(schedule)})")


def format_schedule(schedule: Sequence[int]) -> str:
    """Run-length text of a schedule: (8, 8, 2) -> ``8x2,2``; the inverse of `parse_schedule`."""
    runs = [(p, len(list(group))) for p, group in groupby(schedule)]
    return ",".join(f"{p}x{n}" if n > 1 else str(p) for p, n in runs)
