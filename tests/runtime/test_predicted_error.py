"""The predicted-error rule: statistic, error model, decision, fit, and the command line around it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ddit_export.runtime.predicted_error import WARMUP_STEPS, ErrorModel, block_detail, predicted_x0
from ddit_export.runtime.scheduler import AccelerationScheduler, ScheduleConfig

pytestmark = pytest.mark.usefixtures("torch_single_thread")

MODEL = ErrorModel((0.1, 0.5, 1.0), ((8, (3.0, 2.0, 1.0)), (4, (2.0, 1.5, 0.5))))


def _loop_detail(x: torch.Tensor, p: int) -> float:
    """RMS of x minus each channel's P x P block mean, written out block by block (no padding needed here)."""
    b, c, h, w = x.shape
    total, count = 0.0, 0
    for n in range(b):
        for ch in range(c):
            for i in range(0, h, p):
                for j in range(0, w, p):
                    block = x[n, ch, i:i + p, j:j + p]
                    total += float(((block - block.mean()) ** 2).sum())
                    count += block.numel()
    return (total / count) ** 0.5


def _reference_rule(latents, sigmas, model, tau, sizes, base):
    """The rule as written in docs/method.md, with loops: warm-up at the coarsest, then min error^2 + tau * share."""
    h, w = latents[0].shape[-2:]
    share = {p: (h // p) * (w // p) / ((h // base) * (w // base)) for p in sizes}
    out = []
    for k, z in enumerate(latents):
        if k < WARMUP_STEPS:
            out.append(max(sizes))
            continue
        v = (z - latents[k - 1]) / (sigmas[k] - sigmas[k - 1])
        x0 = z - sigmas[k] * v
        step = sigmas[k - 1] - sigmas[k]
        costs = {base: tau * share[base]}
        for p in sizes:
            if p != base:
                costs[p] = (model.coefficient(p, sigmas[k]) * _loop_detail(x0, p) * step) ** 2 + tau * share[p]
        pick = min(costs, key=costs.get)
        out.append(min(pick, out[-1]))
    return out


def _trajectory(seed: int, steps: int = 14):
    g = torch.Generator().manual_seed(seed)
    sigmas = torch.linspace(1.0, 0.05, steps).tolist()
    # Structure that sharpens over the steps: fine detail grows as sigma falls.
    latents, z = [], torch.randn(1, 3, 16, 16, generator=g)
    for k in range(steps):
        z = z + torch.randn(1, 3, 16, 16, generator=g) * 0.05 * k
        latents.append(z.clone())
    return latents, sigmas


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rule_matches_a_loop_reference(seed):
    latents, sigmas = _trajectory(seed)
    picked = []
    for tau in (1e-3, 5e-2, 0.2, 1.0):
        cfg = ScheduleConfig((2, 4, 8), tau=tau, warmup_patch=8, monotone=True, statistic="x0-detail",
                             error_model=MODEL)
        sched = AccelerationScheduler(cfg)
        got = [sched.step(z, i, s).patch_size for i, (z, s) in enumerate(zip(latents, sigmas))]
        assert got == _reference_rule(latents, sigmas, MODEL, tau, (2, 4, 8), 2), tau
        assert got[:WARMUP_STEPS] == [8] * WARMUP_STEPS and got == sorted(got, reverse=True)
        picked += got[WARMUP_STEPS:]
    assert {2, 4, 8} <= set(picked)  # the taus reach every size: the comparison is not vacuous


def test_base_first_steps_open_at_the_base_without_arming_the_ratchet():
    latents, sigmas = _trajectory(0)
    kwargs = dict(tau=1.0, warmup_patch=8, monotone=True, statistic="x0-detail", error_model=MODEL)
    plain = AccelerationScheduler(ScheduleConfig((2, 4, 8), **kwargs))
    plain_sizes = [plain.step(z, i, s).patch_size for i, (z, s) in enumerate(zip(latents, sigmas))]
    opened = AccelerationScheduler(ScheduleConfig((2, 4, 8), base_first_steps=3, **kwargs))
    got = [opened.step(z, i, s).patch_size for i, (z, s) in enumerate(zip(latents, sigmas))]
    # three base steps, then exactly the rule's own decisions: the warm-up at 8, coarse again after the base
    assert got[:3] == [2, 2, 2] and got[3:] == plain_sizes[3:] and 8 in got[3:]
    opened.reset()
    assert [opened.step(z, i, s).patch_size for i, (z, s) in enumerate(zip(latents, sigmas))] == got
    with pytest.raises(ValueError, match="base_first_steps"):
        ScheduleConfig((2, 4, 8), base_first_steps=-1)


def test_block_detail_matches_loops_and_ignores_a_uniform_block():
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    got = block_detail(x, (4, 8)).tolist()
    assert got == pytest.approx([_loop_detail(x, 4), _loop_detail(x, 8)], rel=1e-4)
    # A grid that 8 does not divide (Wan's 60 x 104) is replicate-padded first, as the engines pad.
    odd = torch.randn(1, 2, 12, 20, generator=torch.Generator().manual_seed(4))
    padded = torch.nn.functional.pad(odd, (0, 4, 0, 4), mode="replicate")
    assert block_detail(odd, (8,)).item() == pytest.approx(_loop_detail(padded, 8), rel=1e-4)
    flat = torch.arange(16.0).repeat_interleave(8).reshape(1, 1, 16, 8).expand(1, 1, 16, 8).contiguous()
    assert block_detail(torch.ones(1, 3, 8, 8) * 5, (4,)).item() == 0
    assert block_detail(flat, (2,)).item() > 0


def test_predicted_x0_inverts_an_euler_step():
    x0, noise = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    z_prev, z = 0.6 * x0 + 0.4 * noise, 0.7 * x0 + 0.3 * noise  # flow matching: z = (1 - s) x0 + s noise
    assert torch.allclose(predicted_x0(z, z_prev, 0.3, 0.4), x0, atol=1e-5)


def test_error_model_interpolates_in_sigma_and_round_trips():
    assert MODEL.coefficient(8, 0.3) == pytest.approx(2.5) and MODEL.coefficient(8, 0.0) == 3.0
    assert MODEL.coefficient(4, 2.0) == 0.5
    assert ErrorModel.from_json(json.loads(json.dumps(MODEL.to_json()))) == MODEL
    with pytest.raises(ValueError, match="no size 16"):
        MODEL.coefficient(16, 0.5)
    with pytest.raises(ValueError, match="calibrate ENGINE_DIR --error-model"):
        ErrorModel.from_json({"sigmas": [0.1], "coefficients": {"8": ["x"]}})
    with pytest.raises(ValueError, match="ascending"):
        ErrorModel((0.5, 0.1), ((8, (1.0, 1.0)),))
    with pytest.raises(ValueError, match="finite coefficients"):
        ErrorModel((0.1,), ((8, (float("nan"),)),))


def test_config_and_scheduler_refuse_what_the_rule_cannot_use():
    with pytest.raises(ValueError, match="error model"):
        ScheduleConfig((2, 4, 8), statistic="x0-detail")
    with pytest.raises(ValueError, match=r"sizes \[16\]"):
        ScheduleConfig((2, 16), statistic="x0-detail", error_model=MODEL)
    sched = AccelerationScheduler(ScheduleConfig((2, 4, 8), statistic="x0-detail", error_model=MODEL))
    with pytest.raises(ValueError, match="sigma"):
        sched.step(torch.zeros(1, 3, 8, 8), 0)
    for i in range(WARMUP_STEPS):
        sched.step(torch.zeros(1, 3, 8, 8), i, 1.0 - 0.1 * i)
    with pytest.raises(ValueError, match="decreasing"):
        sched.step(torch.zeros(1, 3, 8, 8), WARMUP_STEPS, 1.0 - 0.1 * (WARMUP_STEPS - 1))


def test_export_refuses_the_rule_without_a_model():
    from ddit_export.export.request import ExportRequest

    with pytest.raises(ValueError, match="calibrate ENGINE_DIR --error-model"):
        ExportRequest(model="tiny", patch_sizes=(2, 4), rule="predicted-error", out="unused")


def test_fit_measures_each_coarse_engines_error_on_the_base_trajectory(tiny_flux_backends):
    from ddit_export.bench.error_model import fit_error_model
    from ddit_export.pipelines import generate, make_conditioning
    from ddit_export.runtime.runner import schedule_config

    backend, steps = tiny_flux_backends["onnx"], 7
    cond = make_conditioning(backend.manifest, "a red bicycle")
    model, record = fit_error_model(backend, [(cond, 0)], steps)
    assert record == {"samples": 1, "steps": steps} and model.sizes == (8, 4)
    # By hand at one step: the base trajectory, both engines on its latent, the ratio to the statistic.
    ref = generate(backend, cond, schedule_config(backend, static_patch=2), steps=steps, seed=0, return_trajectory=True)
    sigmas, k = (ref.timesteps / 1000).tolist(), WARMUP_STEPS + 1
    z, inputs = ref.trajectory, cond.engine_inputs(backend.io_spec, backend.device, backend.dtype)
    timestep = torch.full((1,), float(ref.timesteps[k]) / 1000)
    base = backend(2, z[k], timestep=timestep, **inputs).clone()
    coarse = backend(8, z[k], timestep=timestep, **inputs)
    error = float((coarse - base).pow(2).mean().sqrt())
    detail = block_detail(predicted_x0(z[k], z[k - 1], sigmas[k], sigmas[k - 1]), (8,)).item()
    assert model.coefficient(8, sigmas[k]) == pytest.approx(error / detail, rel=1e-4)


def test_calibrate_error_model_then_generate_and_the_pipeline_agree(tiny_flux_engines, tiny_flux_vae, tmp_path, cli):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from ddit_export.families.flux import FLUX
    from ddit_export.pipelines import generate, make_conditioning
    from ddit_export.pipelines.flux import FLUX_SHIFT
    from ddit_export.pipelines.flux_dropin import DDiTFluxTransformer
    from ddit_export.runtime.backends import get_backend
    from ddit_export.runtime.runner import schedule_config

    folder = tmp_path / "engines"
    shutil.copytree(tiny_flux_engines, folder)
    code, out = cli("calibrate", str(folder), "--error-model", "--steps", "8", "--seeds", "0,1", "--taus", "1e-6",
                    "--out", str(tmp_path / "cal"))
    assert code == 0, out
    scheduler = json.loads((folder / "manifest.json").read_text())["scheduler"]
    assert scheduler["rule"] == "predicted-error" and scheduler["tau"] == 1e-6
    assert set(scheduler["error_model"]["coefficients"]) == {"4", "8"}
    assert json.loads((tmp_path / "cal" / "error_model.json").read_text())["samples"] == 2

    with get_backend("onnx", folder) as backend:
        cond = make_conditioning(backend.manifest, "a red bicycle")
        ref = generate(backend, cond, schedule_config(backend), steps=8, seed=0)
        assert ref.trace.schedule[:WARMUP_STEPS] == [8] * WARMUP_STEPS
        # asked for sizes without the calibrated warm-up size, the rule warms up at the coarsest size asked for
        narrowed = generate(backend, cond, schedule_config(backend, patch_sizes=(2, 4)), steps=8, seed=0)
        assert narrowed.trace.schedule[:WARMUP_STEPS] == [4] * WARMUP_STEPS and 8 not in narrowed.trace.schedule
        # a folder whose default is 2,4 (the demo's): its warm-up (4) is for those sizes; asked for 2,4,8 the
        # rule warms up at 8 again, or its ratchet would never let size 8 run
        manifest = backend.manifest
        manifest["scheduler"] |= {"patch_sizes": [2, 4], "warmup_patch": 4}
        assert schedule_config(backend).warmup_patch == 4
        assert schedule_config(backend, patch_sizes=(2, 4, 8)).warmup_patch == 8
        manifest["scheduler"] |= {"patch_sizes": None, "warmup_patch": 8}
        assert all(s.stats is not None for s in ref.trace.steps[WARMUP_STEPS:])
        # The drop-in reads sigma from FluxPipeline's timestep: the same decisions, the same latent.
        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True,
                                                                      **FLUX_SHIFT),
                            vae=tiny_flux_vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                            tokenizer_2=None, transformer=None)
        pipe.transformer = DDiTFluxTransformer(backend, schedule_config(backend))
        pipe.set_progress_bar_config(disable=True)
        packed = pipe(height=128, width=128, num_inference_steps=8, max_sequence_length=8, guidance_scale=3.5,
                      generator=torch.Generator().manual_seed(0), prompt_embeds=cond.encoder_hidden_states,
                      pooled_prompt_embeds=cond.pooled_projections, output_type="latent").images
        assert pipe.transformer.trace.schedule == ref.trace.schedule
        assert torch.equal(FLUX.unpack(packed, 2, backend.latent_shape), ref.latent)


def test_calibrate_error_model_refuses_bad_input(tiny_flux_engines, tmp_path, cli):
    cli.refuses("calibrate", str(tiny_flux_engines), "--error-model", "--taus", "1e-4,1e-3", "--out", str(tmp_path),
                naming=("single value",))
    cli.refuses("calibrate", str(tiny_flux_engines), "--error-model", "--steps", "3", "--out", str(tmp_path),
                naming=("--steps",))


def test_wan_sampling_runs_the_rule(tiny_wan_engines):
    from ddit_export.pipelines import generate, make_conditioning
    from ddit_export.runtime.backends import get_backend

    with get_backend("onnx", tiny_wan_engines) as backend:
        sizes = tuple(backend.patch_sizes)
        model = ErrorModel((0.0, 1.0), tuple((p, (1.0, 1.0)) for p in sizes if p != backend.base_patch))
        cfg = ScheduleConfig(sizes, base_patch=backend.base_patch, tau=0.0, warmup_patch=max(sizes), monotone=True,
                             statistic="x0-detail", error_model=model)
        result = generate(backend, make_conditioning(backend.manifest, "a cat"), cfg, steps=6, seed=0)
    # tau 0: any error is worth more than the tokens, so after the warm-up every step runs the base.
    assert result.trace.schedule == [max(sizes)] * WARMUP_STEPS + [backend.base_patch] * (6 - WARMUP_STEPS)
