"""`ddit-export train --spectral-weight`: the term asks for the teacher's amount of detail, not its placement."""

import torch

from ddit_export.ddit.model import DDiTModel
from ddit_export.families.flux import FLUX
from ddit_export.train import DistillationObjective, freeze_for_distillation, train
from ddit_export.train.spectrum import radial_power, spectral_distance

from .test_train import LATENT, TINY, quiet, tiny_conditioning, tiny_config, train_cli
from .test_train_recipe import prompts  # noqa: F401 (fixture)


def textured(seed=0, shape=(2, 3, 16, 16)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def blurred(x):
    """A 3x3 box blur with circular padding: the same image with its fine detail smoothed away."""
    return sum(x.roll((dy, dx), dims=(-2, -1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9


def test_radial_power_keeps_the_energy_and_sees_blur_at_high_frequencies():
    x = textured()
    power = radial_power(x)
    fy = torch.fft.fftfreq(16) * 16
    radius = (fy[:, None] ** 2 + fy[None, :] ** 2).sqrt().round().long().flatten()
    counts = torch.bincount(radius).float()
    # Parseval with an orthonormal FFT: the rings' power sums to the energy per channel
    torch.testing.assert_close((power * counts).sum(-1), x.pow(2).sum((-2, -1)).mean(1))
    smooth = radial_power(blurred(x))
    assert (smooth[:, -4:] < 0.2 * power[:, -4:]).all()  # the outer rings lose most of their power
    torch.testing.assert_close(smooth[:, 0], power[:, 0])  # the mean (ring 0) is untouched by a blur


def test_spectral_distance_ignores_placement_and_penalises_missing_detail():
    x = textured(1)
    moved = x.roll((3, 5), dims=(-2, -1))  # the same detail elsewhere: large MSE, same spectrum
    assert spectral_distance(moved, x) < 1e-10 < torch.nn.functional.mse_loss(moved, x)
    assert spectral_distance(blurred(x), x) > 0.5
    video = textured(2, (1, 4, 3, 8, 8))  # Wan latents [B, C, F, H, W]: frames average like channels
    assert radial_power(video).shape == (1, 7)


def test_the_spectral_gradient_restores_detail(torch_single_thread):
    target = textured(3)
    prediction = blurred(target).requires_grad_(True)
    optimizer = torch.optim.Adam([prediction], lr=0.02)
    before = spectral_distance(prediction, target).item()
    outer_before = radial_power(prediction.detach())[:, -4:] / radial_power(target)[:, -4:]
    for _ in range(60):
        optimizer.zero_grad()
        spectral_distance(prediction, target).backward()
        optimizer.step()
    assert spectral_distance(prediction, target).item() < 0.1 * before
    outer = radial_power(prediction.detach())[:, -4:] / radial_power(target)[:, -4:]
    assert (outer > 2 * outer_before).all() and (outer > 0.35).all()  # the fine detail came back


def test_objective_returns_the_mse_and_the_spectral_term_on_predicted_clean_latents():
    model = DDiTModel(FLUX, FLUX.tiny(), [2, 4, 8], lora_rank=4)
    freeze_for_distillation(model)
    latent, conditioning = torch.randn(2, *LATENT[1:]), tiny_conditioning(batch=2)
    plain = DistillationObjective(model)(latent, conditioning)
    objective = DistillationObjective(model, spectral_weight=0.5)
    both = objective(latent, conditioning)
    assert plain.shape == (2,) and both.shape == (2, 2)
    torch.testing.assert_close(both[0], plain)  # the velocity MSE is the same figure with or without the term
    sigma = conditioning["timestep"].view(-1, 1, 1, 1)
    with torch.no_grad():
        teacher = objective.teacher(latent, conditioning)
        student = model(latent, 4, **conditioning).float()
    expected = spectral_distance(latent - sigma * student, latent - sigma * teacher)
    torch.testing.assert_close(both[1, 0], expected)
    weights = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(objective.training_loss(both, weights), ((both[0] + 0.5 * both[1]) * weights).sum())


def test_training_with_the_spectral_term_logs_it_and_must_resume_with_it(tmp_path, prompts, torch_single_thread):  # noqa: F811
    config = tiny_config(tmp_path / "s", prompts, steps=2, spectral_weight=1.0, validation_share=0.5,
                         checkpoint_every=1)
    result = train(config, status=quiet)
    assert {"spectral_per_size", "held_out_spectral_per_size", "held_out_loss_per_size"} <= set(result.log[-1])
    assert set(result.log[-1]["spectral_per_size"]) == {"4", "8"}
    assert config.identity()["spectral_weight"] == 1.0
    assert "spectral_weight" not in tiny_config(tmp_path / "p", prompts).identity()  # older checkpoints resume
    code = train_cli(TINY + ["--prompts", str(prompts), "--steps", "3", "--out", str(tmp_path / "s"),
                             "--validation-share", "0.5", "--resume"])
    assert code == 2  # resuming without the term it was trained with is refused
