"""Every model family by name: the one list a new family is added to.

The families import `base`, this module imports the families, and nothing imports it back, so the
registry closes no import cycle.
"""

from __future__ import annotations

from .base import Family
from .flux import FLUX
from .wan import WAN

FAMILIES: dict[str, Family] = {f.name: f for f in (FLUX, WAN)}


def family_by_name(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family '{name}'; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]
