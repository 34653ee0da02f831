"""Step caching composed with DDiT on staged engines: TeaCache and first-block caching (docs/caching.md)."""

from .spec import CacheSpec, parse_cache
from .step_cache import StepCache, require_staged

__all__ = ["CacheSpec", "StepCache", "parse_cache", "require_staged"]
