"""Optimizers: AdamW (torch) by default, Prodigy (the paper's FLUX choice) when `prodigyopt` is installed."""

from __future__ import annotations

import math

import torch

LR_SCHEDULES = ("constant", "cosine")


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise ValueError("--optimizer prodigy needs the prodigyopt package (`pip install prodigyopt`); "
                             "or use --optimizer adamw") from None
        return Prodigy(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}' (adamw or prodigy)")


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at `step` (1-based) of `total`.

    cosine: linear warm-up over the first 5% of the steps, then cosine decay to 10% of the base rate.
    A pure function of the step, so a resumed run continues on the same curve (a resume that adds
    --steps stretches the rest of it).
    """
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule '{schedule}' ({' or '.join(LR_SCHEDULES)})")
    warmup = max(1, total // 20)
    if step <= warmup:
        return step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))
