"""The prompts a command samples when the user gives none: the model's own (the demo's class names), else one."""

from __future__ import annotations

DEFAULT_PROMPT = "a photograph of a red fox in fresh snow, golden hour"


def evaluation_hooks(manifest: dict) -> dict:
    """Model-specific prompts, image decoding and scores (the demo: its classes, codec, classifier)."""
    from ..demo.evaluate import schedule_hooks

    return schedule_hooks(manifest) or {}


def prompts_for(given: list[str] | None, manifest: dict) -> list[str]:
    """``given`` (--prompt) if any, else the model's evaluation prompts, else DEFAULT_PROMPT."""
    return list(given or evaluation_hooks(manifest).get("prompts") or [DEFAULT_PROMPT])
