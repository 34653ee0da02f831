"""The demo's classes: each is one shape in one colour, named like a prompt ("red circle")."""

from __future__ import annotations

# name -> (shape, RGB in [0, 1]). Colours are saturated and backgrounds are greyish, so colour alone
# almost identifies the class; the shape makes the class visible in a picture too.
CLASSES: dict[str, tuple[str, tuple[float, float, float]]] = {
    "red circle": ("circle", (0.90, 0.15, 0.15)),
    "green square": ("square", (0.15, 0.80, 0.20)),
    "blue triangle": ("triangle", (0.20, 0.30, 0.95)),
    "yellow cross": ("cross", (0.95, 0.85, 0.10)),
    "magenta diamond": ("diamond", (0.90, 0.20, 0.85)),
    "cyan ring": ("ring", (0.10, 0.85, 0.90)),
}
CLASS_NAMES: list[str] = list(CLASSES)


def class_index(name: str) -> int:
    """Index of a class name (the demo's "prompt"); a clear error lists the known ones."""
    key = " ".join(name.lower().split())
    if key not in CLASSES:
        raise ValueError(f"the demo model knows the classes {', '.join(CLASS_NAMES)} (got {name!r})")
    return CLASS_NAMES.index(key)
