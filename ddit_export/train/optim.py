"""Optimizers: AdamW (torch) by default, Prodigy (the paper's FLUX choice) when `prodigyopt` is installed."""

from __future__ import annotations

import torch


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
