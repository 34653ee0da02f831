"""The distillation objective: student at size P vs the frozen teacher at the base size.

    loss_P = mean || v_student(z_t, P) - v_teacher(z_t, p) ||^2    (same z_t, t, conditioning)

Every optimisation step trains EVERY extra size on the same batch: one teacher call, one student
call per size, the per-size losses summed into one backward. One forward/backward per step is
also what DistributedDataParallel (accelerate) expects, and each size's parameters only receive
gradient from their own term.

With a spectral weight (`train --spectral-weight`, spectrum.py) each size also gets

    spectral_P = mean (log Pow_student(r) - log Pow_teacher(r))^2   over rings r of the spatial spectrum

of the predicted clean latents x0 = z_t - sigma * v (flow matching), and the forward returns both
terms so the velocity MSE stays comparable across runs in the logs.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .spectrum import spectral_distance


@contextmanager
def requires_grad_kept(module: nn.Module):
    """Restore every parameter's requires_grad flag after a `DDiTModel` call.

    Switching peft adapters (which `DDiTModel` does per call) sets requires_grad on LoRA weights:
    True for the active adapter, False for all on the way out. Autograd drops the gradient of a
    leaf whose flag is False when backward reaches it, so without this the LoRA would never train.
    """
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


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
    """forward(z_t, conditioning) -> per-size velocity MSE [len(sizes)] (fp32); with `spectral_weight` > 0,
    [2, len(sizes)]: the velocity MSE and the spectral term (`training_loss` combines them)."""

    def __init__(self, model, sizes=None, spectral_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.sizes = model.extra_sizes if sizes is None else list(sizes)
        self.spectral_weight = float(spectral_weight)

    def teacher(self, latent: torch.Tensor, conditioning: dict) -> torch.Tensor:
        # Autograd stays on: if any weight the base path uses were trainable, the prediction would
        # carry gradient and we stop. When nothing requires grad, autograd records (and keeps) nothing.
        with requires_grad_kept(self.model):
            target = self.model(latent, self.model.base_patch, **conditioning)
        if target.requires_grad:
            raise RuntimeError("the teacher (base size) prediction carries gradient: the base model is not frozen")
        return target.float()

    def forward(self, latent: torch.Tensor, conditioning: dict) -> torch.Tensor:
        target = self.teacher(latent, conditioning)
        sigma = self.sigma(conditioning, latent) if self.spectral_weight else None
        if sigma is not None:  # the clean latent the teacher points to, once for every size
            noisy = latent.float()
            teacher_clean = noisy - sigma * target
        losses, spectral = [], []
        for patch in self.sizes:
            with requires_grad_kept(self.model):
                prediction = self.model(latent, patch, **conditioning).float()
            losses.append(F.mse_loss(prediction, target))
            if sigma is not None:
                spectral.append(spectral_distance(noisy - sigma * prediction, teacher_clean))
        if sigma is None:
            return torch.stack(losses)
        return torch.stack([torch.stack(losses), torch.stack(spectral)])

    def sigma(self, conditioning: dict, latent: torch.Tensor) -> torch.Tensor:
        """The noise level of each sample, shaped to broadcast over `latent` (flow matching: z = (1-s) x0 + s n)."""
        timestep = conditioning["timestep"].float()
        if timestep.dim() != 1:
            raise ValueError("--spectral-weight needs one timestep per sample (this model passes "
                             f"{tuple(timestep.shape)}); train without it")
        sigma = timestep / self.model.family.timestep_scale
        return sigma.view(-1, *([1] * (latent.dim() - 1)))

    def training_loss(self, losses: torch.Tensor, size_weights: torch.Tensor) -> torch.Tensor:
        """The scalar a step minimises: per-size weighted velocity MSE (+ weighted spectral term)."""
        if losses.dim() == 1:
            return (losses * size_weights).sum()
        return ((losses[0] + self.spectral_weight * losses[1]) * size_weights).sum()
