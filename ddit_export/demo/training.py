"""Training loops of the demo: the base transformer (rectified flow) and the classifier.

The flow-matching objective is FLUX's: z_s = (1 - s) x0 + s * noise, the model predicts
noise - x0 at timestep s (passed as s in [0, 1]; the transformer scales it by 1000 itself). Noise
levels s are drawn exactly as the runtime's sampler visits them: uniform u shifted by FLUX's
resolution-dependent mu for 256 base tokens (`pipelines.flux.flow_sigma`), so training and sampling agree.
The model is called through `FLUX.predict`, the same packing and positions the engines use.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from ..families.flux import FLUX
from ..pipelines.demo.class_table import class_conditions
from ..pipelines.demo.codec import LATENT_CHANNELS, encode
from ..pipelines.flux import flow_sigma, flux_sampler, shift_mu
from .classifier import DemoClassifier
from .data import sample_batch


def sampler_mu(latent_hw: int = 32) -> float:
    """The shift the runtime sampler applies for this latent grid (base tokens = (hw / 2)^2)."""
    return shift_mu(flux_sampler(), (latent_hw // FLUX.base_patch) ** 2)


def flow_batch(batch: int, gen: torch.Generator, table: dict, mu: float, channels: int = LATENT_CHANNELS):
    """(z_s, conditioning with timestep, target) for one batch of fresh procedural images."""
    images, labels = sample_batch(batch, gen)
    x0 = encode(images, channels)
    noise = torch.randn(x0.shape, generator=gen)
    u = torch.rand(batch, generator=gen).clamp(1e-3, 1.0)
    sigma = flow_sigma(u, mu)
    s = sigma.view(-1, 1, 1, 1)
    cond = class_conditions(labels, table)
    cond["timestep"] = sigma
    return (1 - s) * x0 + s * noise, cond, noise - x0


def train_base(model, table: dict, steps: int, batch: int, lr: float, seed: int, ema_decay: float, log=print,
               checkpoint=None, checkpoint_every: int = 0, channels: int = LATENT_CHANNELS, name: str = "base",
               stop_at: int | None = None):
    """Train `model` in place on a `channels`-channel latent; returns (EMA copy used for shipping, per-step losses).

    `checkpoint(ema)` is called every `checkpoint_every` steps, so a long run leaves usable weights early.
    `stop_at` ends the run after that many steps of a `steps`-step schedule: the weights are then exactly
    that step's checkpoint of the full run (how a run cut for time is reproduced).
    """
    gen = torch.Generator().manual_seed(seed)
    mu = sampler_mu()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    warmup = max(1, steps // 20)
    # Linear warm-up, then cosine decay to 10%: short runs need the high rate early and a calm end.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warmup) * (0.55 + 0.45 * torch.cos(torch.tensor(k / steps * 3.14159)).item())
    )
    history, start = [], time.perf_counter()
    model.train()
    for step in range(1, min(steps, stop_at or steps) + 1):
        z, cond, target = flow_batch(batch, gen, table, mu, channels)
        loss = F.mse_loss(FLUX.predict(model, z, FLUX.base_patch, cond), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        schedule.step()
        decay = min(ema_decay, (1 + step) / (10 + step))  # EMA warm-up: early weights are mostly noise
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
        history.append(round(loss.item(), 5))
        if step % 25 == 0 or step == steps:
            recent = sum(history[-25:]) / len(history[-25:])
            log(f"{name} step {step}/{steps}: loss {recent:.4f} ({time.perf_counter() - start:.0f} s)")
        if checkpoint and checkpoint_every and step % checkpoint_every == 0 and step < steps:
            checkpoint(ema)
    return ema.eval(), history


def noisy(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild degradations so the classifier also reads imperfect samples by colour and shape."""
    b = images.shape[0]
    amount = torch.rand(b, 1, 1, 1, generator=gen) * 0.08
    images = images + amount * torch.randn(images.shape, generator=gen)
    blurred = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    mix = (torch.rand(b, 1, 1, 1, generator=gen) < 0.3).float()
    return (mix * blurred + (1 - mix) * images).clamp(0, 1)


def train_classifier(steps: int, batch: int, seed: int, log=print) -> tuple[DemoClassifier, float]:
    """Train the scoring classifier on fresh images; returns it and its accuracy on 512 clean held-out ones."""
    gen = torch.Generator().manual_seed(seed)
    model = DemoClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(1, steps + 1):
        images, labels = sample_batch(batch, gen)
        loss = F.cross_entropy(model(noisy(images, gen)), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0:
            log(f"classifier step {step}/{steps}: loss {loss.item():.4f}")
    model.eval()
    images, labels = sample_batch(512, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    return model, accuracy
