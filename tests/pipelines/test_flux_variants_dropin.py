"""FLUX.1-schnell, Depth/Canny, Fill and Kontext engines inside their own stock diffusers pipelines (the
drop-in transformer), and `generate` on the same engines: the folder's scheduler, VAE and text encoders."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from ddit_export.families.flux import FLUX
from ddit_export.pipelines.flux_dropin import DDiTFluxTransformer
from ddit_export.pipelines.registry import generate, make_conditioning
from ddit_export.runtime.backends import get_backend
from ddit_export.runtime.runner import schedule_config
from tests.flux_variants import HEIGHT, PIPELINES, TEXT_LEN, WIDTH

pytestmark = pytest.mark.usefixtures("torch_single_thread")

STEPS = 6
PROMPT = "a red fox"


def picture(seed: int, grey: bool = False) -> Image.Image:
    rng = np.random.default_rng(seed)
    if grey:  # a mask: the right half repainted
        mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
        mask[:, WIDTH // 2:] = 255
        return Image.fromarray(mask)
    return Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def image_arguments(name: str) -> dict:
    """The stock pipeline's image arguments for the variant."""
    return {"control": {"control_image": picture(1)}, "fill": {"image": picture(1), "mask_image": picture(2, True)},
            "kontext": {"image": picture(1), "_auto_resize": False, "max_area": HEIGHT * WIDTH}}.get(name, {})


def stock(folder, name: str):
    pipe = getattr(diffusers, PIPELINES[name]).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, name: str, steps: int = STEPS) -> torch.Tensor:
    out = pipe(prompt=PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=steps, max_sequence_length=TEXT_LEN,
               generator=torch.Generator().manual_seed(0), output_type="latent", **image_arguments(name)).images
    return FLUX.unpack(out, 2, (1, 16, HEIGHT // 8, WIDTH // 8))


def relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", ["schnell", "control", "fill", "kontext"])
def test_dropin_at_the_static_base_equals_the_stock_pipeline_and_ddit_runs_every_size(flux_variant_engines, name):
    engines = flux_variant_engines(name)
    with get_backend("onnx", engines) as backend:
        pipe = stock(backend.manifest.model_id, name)
        reference = run(pipe, name)
        pipe.transformer = DDiTFluxTransformer(backend, schedule_config(backend, static_patch=2))
        assert relative(run(pipe, name), reference) <= 1e-4
        assert pipe.transformer.trace.schedule == [2] * STEPS

        pipe.transformer = DDiTFluxTransformer(backend, schedule_config(backend, tau=1e9))  # untrained size 4
        latent = run(pipe, name)
        trace = pipe.transformer.trace
        assert trace.schedule == [2, 2, 2, 4, 4, 4] and all(s.stats is not None for s in trace.steps[3:])
        assert torch.isfinite(latent).all() and relative(latent, reference) > 1e-3  # size 4 did run


@pytest.mark.parametrize("name", ["schnell", "kontext"])
def test_generate_samples_as_the_stock_pipeline_does(flux_variant_engines, name):
    """Same folder scheduler (schnell: no shift), text encoders, VAE-encoded reference and noise as the stock
    pipeline driving the same engines."""
    engines = flux_variant_engines(name)
    with get_backend("onnx", engines) as backend:
        image = None
        if name == "kontext":
            image = engines.parent / "reference.png"
            picture(1).save(image)
        cond = make_conditioning(backend.manifest, PROMPT, image=str(image) if image else None)
        assert not cond.synthetic and ("reference_latent" in cond.source) == (name == "kontext")
        schedule = schedule_config(backend, tau=1e9)
        ours = generate(backend, cond, schedule, steps=STEPS, seed=0)
        pipe = stock(backend.manifest.model_id, name)
        pipe.transformer = DDiTFluxTransformer(backend, schedule)
        theirs = run(pipe, name)
        assert pipe.transformer.trace.schedule == ours.trace.schedule == [2, 2, 2, 4, 4, 4]
        assert torch.allclose(ours.timesteps, pipe.scheduler.timesteps)
        assert relative(ours.latent, theirs) <= 1e-5


def test_schnell_schedule_is_the_folders_not_flux_devs(flux_variant_engines):
    with get_backend("onnx", flux_variant_engines("schnell")) as backend:
        cond = make_conditioning(backend.manifest, PROMPT)
        timesteps = generate(backend, cond, schedule_config(backend, static_patch=2), steps=4, seed=0).timesteps
    assert torch.allclose(timesteps, torch.tensor([1000.0, 750.0, 500.0, 250.0]))  # linear: no shift


@pytest.mark.parametrize("name", ["control", "fill"])
def test_generate_encodes_the_image_as_the_stock_pipeline_does(flux_variant_engines, name, tmp_path):
    """The condition latent generate makes = the features the stock pipeline appends to the latent's."""
    engines = flux_variant_engines(name)
    paths = {"image": tmp_path / "image.png", "mask": tmp_path / "mask.png"}
    picture(1).save(paths["image"])
    picture(2, True).save(paths["mask"])
    with get_backend("onnx", engines) as backend:
        images = {"image": str(paths["image"]), "mask": str(paths["mask"]) if name == "fill" else None}
        cond = make_conditioning(backend.manifest, PROMPT, seed=0, **images)
        pipe = stock(backend.manifest.model_id, name)
        seen = []
        forward = pipe.transformer.forward
        pipe.transformer.forward = lambda hidden_states, **kw: seen.append(hidden_states) or forward(hidden_states,
                                                                                                   **kw)
        run(pipe, name, steps=1)
    grid = cond.grid_inputs["condition_latent"]
    passed = FLUX.unpack(seen[0][:, :, 64:], 2, tuple(grid.shape))
    if name == "control":  # the control image's sampled latent: the generator's first draw in both
        assert torch.allclose(grid, passed, atol=1e-5)
    else:  # Fill samples the masked image's latent after other draws; the mask channels are exact
        assert torch.equal(grid[:, 16:], passed[:, 16:]) and grid[:, 16:].any() and not grid[:, 16:].all()
        assert torch.allclose(grid[:, :16].mean(), passed[:, :16].mean(), atol=0.1)
