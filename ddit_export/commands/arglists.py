"""Comma-list arguments (`--seeds 0,1`, `--taus 1e-3,3e-3`), parsed one way for every command."""

from __future__ import annotations


def comma_list(text: str, flag: str, kind: type = int, check=None) -> list:
    """`"a,b,c"` -> values of `kind`; a bad or empty list is one clear ValueError naming the flag.

    `check(value, flag)` (one of util/limits.py's) bounds every value."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise ValueError(f"{flag} takes a comma list of {noun} (got {text!r})") from None
    if not values:
        raise ValueError(f"{flag} is empty")
    return [check(v, flag) for v in values] if check else values
