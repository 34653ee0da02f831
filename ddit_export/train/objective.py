"""The distillation objective: student at size P vs the frozen teacher at the base size.

    loss_P = mean || v_student(z_t, P) - v_teacher(z_t, p) ||^2    (same z_t, t, conditioning)

Every optimisation step trains EVERY extra size on the same batch: one teacher call, one student
call per size, the per-size losses summed into one backward. One forward/backward per step is
also what DistributedDataParallel (accelerate) expects, and each size's parameters only receive
gradient from their own term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def freeze_for_distillation(model, sizes=None) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze the DDiT modules and LoRA of `sizes` (default: all extra).

    Returns the trainable parameters in a fixed order (optimizer state is saved against it).
    Trainable parameters are kept in fp32 even when the backbone is bf16: AdamW updates of 1e-4
    vanish in bf16.
    """
    sizes = model.extra_sizes if sizes is None else list(sizes)
    model.requires_grad_(False)
    trainable, seen = [], set()
    for patch in sizes:
        if patch == model.base_patch:
            raise ValueError(f"the base size {patch} is the teacher: it is never trained")
        for param in model.ddit_parameters(patch):
            if id(param) in seen:
                raise RuntimeError(f"a parameter of size {patch} is shared with another size: a bug")
            seen.add(id(param))
            param.data = param.data.float()
            param.requires_grad_(True)
            trainable.append(param)
    return trainable


class DistillationObjective(nn.Module):
    """forward(z_t, conditioning) -> per-size losses [len(sizes)] (fp32)."""

    def __init__(self, model, sizes=None):
        super().__init__()
        self.model = model
        self.sizes = model.extra_sizes if sizes is None else list(sizes)

    def teacher(self, latent: torch.Tensor, conditioning: dict) -> torch.Tensor:
        with torch.no_grad():
            target = self.model(latent, self.model.base_patch, **conditioning)
        if target.requires_grad:  # the base path must stay the untouched model
            raise RuntimeError("the teacher prediction carries gradient: the base path is not frozen")
        return target.float()

    def forward(self, latent: torch.Tensor, conditioning: dict) -> torch.Tensor:
        target = self.teacher(latent, conditioning)
        losses = [F.mse_loss(self.model(latent, patch, **conditioning).float(), target) for patch in self.sizes]
        return torch.stack(losses)
