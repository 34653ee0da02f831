"""Procedural class-conditioned images: one anti-aliased shape on a greyish gradient background.

Everything is drawn from a torch.Generator, so a seed gives the same images on any machine.
"""

from __future__ import annotations

import math

import torch

from ..pipelines.demo.classes import CLASS_NAMES, CLASSES
from ..pipelines.demo.codec import IMAGE_SIZE


def _signed_distance(shape: str, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, negative inside) of a shape centred at 0 with radius r."""
    ax, ay = x.abs(), y.abs()
    if shape == "circle":
        return torch.sqrt(x**2 + y**2) - r
    if shape == "square":
        return torch.maximum(ax, ay) - 0.8 * r
    if shape == "diamond":
        return (ax + ay) / math.sqrt(2) - 0.75 * r
    if shape == "ring":
        return (torch.sqrt(x**2 + y**2) - 0.75 * r).abs() - 0.3 * r
    if shape == "cross":
        arm = 0.33 * r
        return torch.minimum(torch.maximum(ax - r, ay - arm), torch.maximum(ax - arm, ay - r))
    if shape == "triangle":  # pointing up; three half-planes through an equilateral triangle
        s = math.sqrt(3) / 2
        edges = [-y - 0.5 * r, s * x + 0.5 * y - 0.5 * r, -s * x + 0.5 * y - 0.5 * r]
        return torch.stack(edges).amax(0) * 1.0
    raise ValueError(f"unknown shape {shape}")


def render(labels: torch.Tensor, generator: torch.Generator, size: int = IMAGE_SIZE) -> torch.Tensor:
    """B x 3 x size x size images in [0, 1] for class indices `labels`."""
    b = labels.shape[0]

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand((b, *shape), generator=generator)

    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    # Background: low-saturation colour plus a linear gradient in a random direction.
    grey = uniform(0.15, 0.6, 1, 1, 1)
    tint = uniform(-0.08, 0.08, 3, 1, 1)
    angle = uniform(0, 2 * math.pi, 1, 1)
    ramp = (torch.cos(angle) * (xx - size / 2) + torch.sin(angle) * (yy - size / 2)) / size
    image = (grey + tint + uniform(0.1, 0.3, 1, 1, 1) * ramp.unsqueeze(1)).clamp(0, 1)

    cx, cy = uniform(10, size - 10, 1, 1), uniform(10, size - 10, 1, 1)
    radius = uniform(6.5, 10, 1, 1)
    jitter = uniform(-0.07, 0.07, 3, 1, 1)
    phase = torch.randint(0, 4, (b, 2), generator=generator)
    for i, label in enumerate(labels.tolist()):
        cls = CLASSES[CLASS_NAMES[label]]
        dist = _signed_distance(cls.shape, xx - cx[i], yy - cy[i], radius[i])
        alpha = (0.5 - dist).clamp(0, 1)  # one-pixel anti-aliased edge
        fill = (torch.tensor(cls.colour).view(3, 1, 1) + jitter[i]).clamp(0, 1)
        if cls.textured:
            second = (torch.tensor(cls.colour2).view(3, 1, 1) + jitter[i]).clamp(0, 1)
            on = _texture(cls.texture, xx.long() + phase[i, 0], yy.long() + phase[i, 1])
            fill = torch.where(on, fill, second)
        image[i] = image[i] * (1 - alpha) + fill * alpha
    return image


def _texture(kind: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Boolean pattern on integer pixel coordinates: detail at the scale of the base patch (2 pixels)."""
    if kind == "stripes":
        return (y // 2) % 2 == 0
    if kind == "checks":
        return ((x // 2) + (y // 2)) % 2 == 0
    if kind == "diagonal":
        return ((x + y) // 2) % 2 == 0
    raise ValueError(f"unknown texture {kind}")


def sample_batch(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) with uniformly drawn classes."""
    labels = torch.randint(len(CLASS_NAMES), (batch,), generator=generator)
    return render(labels, generator), labels
