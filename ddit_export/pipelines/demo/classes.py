"""The demo's classes, named like prompts ("red circle"): flat-colour shapes and textured shapes.

Flat classes are one saturated colour on a greyish background: after the first few steps nothing in
them changes at a scale below a few pixels, which is what lets coarse patch sizes run. Textured
classes fill the shape with a fine pattern (2-pixel stripes or checks) in two colours: their detail
lives at the scale of the base patch, so a scheduler that reads the latent should keep them at the
base size for longer. The mix is what gives a dynamic schedule something to adapt to.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoClass:
    shape: str  # data._signed_distance
    colour: tuple[float, float, float]  # RGB in [0, 1]
    texture: str | None = None  # None (flat), "stripes" (horizontal, 2 px), "checks" (2 x 2 px), "diagonal"
    colour2: tuple[float, float, float] = (0.05, 0.05, 0.08)  # the texture's second colour

    @property
    def textured(self) -> bool:
        return self.texture is not None


# Colours are saturated and backgrounds greyish, so colour alone almost identifies a class; the shape
# and the texture make it visible in a picture too. Order matters: it is the class index the shipped
# class table and classifier were trained with (the flat six first, as in earlier versions).
CLASSES: dict[str, DemoClass] = {
    "red circle": DemoClass("circle", (0.90, 0.15, 0.15)),
    "green square": DemoClass("square", (0.15, 0.80, 0.20)),
    "blue triangle": DemoClass("triangle", (0.20, 0.30, 0.95)),
    "yellow cross": DemoClass("cross", (0.95, 0.85, 0.10)),
    "magenta diamond": DemoClass("diamond", (0.90, 0.20, 0.85)),
    "cyan ring": DemoClass("ring", (0.10, 0.85, 0.90)),
    "orange striped square": DemoClass("square", (1.00, 0.55, 0.05), "stripes"),
    "white checkered circle": DemoClass("circle", (0.97, 0.97, 0.97), "checks"),
    "lime hatched diamond": DemoClass("diamond", (0.60, 0.95, 0.10), "diagonal"),
}
CLASS_NAMES: list[str] = list(CLASSES)
FLAT_CLASSES: list[str] = [name for name, c in CLASSES.items() if not c.textured]
TEXTURED_CLASSES: list[str] = [name for name, c in CLASSES.items() if c.textured]


def class_index(name: str) -> int:
    """Index of a class name (the demo's "prompt"); a clear error lists the known ones."""
    key = " ".join(name.lower().split())
    if key not in CLASSES:
        raise ValueError(f"the demo model knows the classes {', '.join(CLASS_NAMES)} (got {name!r})")
    return CLASS_NAMES.index(key)
