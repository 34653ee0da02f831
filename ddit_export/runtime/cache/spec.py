"""`--cache teacache:0.25 | fbcache:0.05 | none`: which step cache, at which threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("teacache", "fbcache")
DEFAULT_THRESHOLDS = {"teacache": 0.25, "fbcache": 0.05}  # TeaCache's FLUX 1.5x point; diffusers' FBC default


@dataclass(frozen=True)
class CacheSpec:
    kind: str  # "teacache" | "fbcache"
    threshold: float

    def __str__(self) -> str:
        return f"{self.kind}:{self.threshold:g}"


def parse_cache(text: str | None) -> CacheSpec | None:
    """'teacache:0.25' / 'fbcache' / 'none' -> a CacheSpec (None for no cache); one ValueError otherwise."""
    if text is None:
        return None
    kind, _, value = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind in ("", "none", "off"):
        if value:
            raise ValueError(f"--cache none takes no threshold (got {text!r})")
        return None
    if kind not in KINDS:
        raise ValueError(f"--cache {text!r}: the kind must be one of {', '.join(KINDS)} or none "
                         "(e.g. teacache:0.25, fbcache:0.05)")
    if not value:
        return CacheSpec(kind, DEFAULT_THRESHOLDS[kind])
    try:
        threshold = float(value)
    except ValueError:
        raise ValueError(f"--cache {text!r}: the threshold must be a number (e.g. {kind}:0.1)") from None
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"--cache {text!r}: the threshold must be a finite number >= 0")
    return CacheSpec(kind, threshold)
