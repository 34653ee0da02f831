"""Scheduler-driven dispatch and the sampling loop on tiny FLUX engines."""

from __future__ import annotations

import pytest
import torch

from ddit_export.pipelines.base import initial_noise
from ddit_export.pipelines.registry import generate, make_conditioning
from ddit_export.runtime.conditioning import prompt_seed
from ddit_export.runtime.runner import DDiTRunner, schedule_config
from ddit_export.runtime.scheduler import ScheduleConfig

pytestmark = pytest.mark.usefixtures("torch_single_thread")

STEPS = 10
HUGE_TAU = 1e9
# On these untrained tiny engines tau 4e-3 gives a mixed schedule (2s and 8s) whose statistics
# all stay >10% away from tau, so fp32 round-off between runtimes cannot flip a decision.
MIXED_TAU = 4e-3


def run(backend, steps=STEPS, seed=0, prompt="a lighthouse at dusk", **schedule):
    cond = make_conditioning(backend.manifest, prompt)
    return generate(backend, cond, schedule_config(backend, **schedule), steps=steps, seed=seed)


@pytest.mark.parametrize("name", ["onnx", "torch"])
def test_tau_zero_is_the_static_base_run_exactly(tiny_flux_backends, name):
    backend = tiny_flux_backends[name]
    dynamic = run(backend, tau=0.0)
    static = run(backend, static_patch=2)
    assert dynamic.trace.schedule == static.trace.schedule == [2] * STEPS
    assert torch.equal(dynamic.latent, static.latent)
    assert all(s.stats is None for s in static.trace.steps)  # static: no statistics at all
    assert all(s.stats is not None for s in dynamic.trace.steps[3:])


@pytest.mark.parametrize("name", ["onnx", "torch"])
def test_huge_tau_runs_the_coarsest_size_after_warmup(tiny_flux_backends, name):
    result = run(tiny_flux_backends[name], tau=HUGE_TAU)
    assert result.trace.schedule == [2, 2, 2] + [8] * (STEPS - 3)


def test_onnx_and_torch_agree_on_schedule_and_latents(tiny_flux_backends):
    ref = run(tiny_flux_backends["torch"], tau=MIXED_TAU, steps=12)
    ort = run(tiny_flux_backends["onnx"], tau=MIXED_TAU, steps=12)
    assert ort.trace.schedule == ref.trace.schedule
    assert {2, 8} <= set(ref.trace.schedule)  # a real mix, not a trivial schedule
    torch.testing.assert_close(ort.latent, ref.latent, atol=1e-4, rtol=1e-4)


def test_warmup_patch_and_base_last_steps(tiny_flux_backends):
    result = run(tiny_flux_backends["onnx"], tau=HUGE_TAU, warmup_patch=4, base_last_steps=2)
    assert result.trace.schedule == [4, 4, 4] + [8] * (STEPS - 5) + [2, 2]
    opened = run(tiny_flux_backends["onnx"], tau=HUGE_TAU, warmup_patch=4, base_first_steps=2)
    assert opened.trace.schedule == [2, 2, 4] + [8] * (STEPS - 3)  # base opening, then the rule's own steps


def test_trace_records_statistics_and_time_split(tiny_flux_backends):
    trace = run(tiny_flux_backends["onnx"], tau=HUGE_TAU).trace
    steps = trace.steps
    assert [s.step for s in steps] == list(range(STEPS))
    assert [s.stats for s in steps[:3]] == [None] * 3
    for s in steps[3:]:
        assert list(s.stats) == [8, 4]  # candidates, largest first
        assert all(v >= 0 for v in s.stats.values())
    for s in steps:
        assert s.engine_calls == 1
        assert 0 < s.scheduler_seconds and 0 < s.engine_seconds
        assert s.scheduler_seconds + s.engine_seconds <= s.seconds + 1e-9
    totals = trace.totals()
    assert totals["rest_seconds"] >= 0
    assert totals["seconds"] == pytest.approx(sum(s.seconds for s in steps))
    assert trace.to_json()["steps"][5]["stats"].keys() == {"8", "4"}


def test_trajectory_holds_every_sampler_latent(tiny_flux_backends):
    backend = tiny_flux_backends["onnx"]
    cond = make_conditioning(backend.manifest, "x")
    result = generate(backend, cond, schedule_config(backend), steps=4, seed=3, return_trajectory=True)
    assert result.trajectory.shape == (5, *backend.latent_shape)
    assert torch.equal(result.trajectory[0], initial_noise(backend.latent_shape, 3, "cpu", torch.float32))
    assert torch.equal(result.trajectory[-1], result.latent)


def test_seed_and_prompt_change_the_result(tiny_flux_backends):
    backend = tiny_flux_backends["onnx"]
    base = run(backend, steps=3).latent
    assert torch.equal(run(backend, steps=3).latent, base)
    assert not torch.equal(run(backend, steps=3, seed=1).latent, base)
    assert not torch.equal(run(backend, steps=3, prompt="another prompt").latent, base)
    assert prompt_seed("a") == prompt_seed("a") != prompt_seed("b")


def test_runner_cfg_passes_share_one_decision(tiny_flux_backends):
    backend = tiny_flux_backends["onnx"]
    runner = DDiTRunner(backend, schedule_config(backend, tau=HUGE_TAU), total_steps=6)
    cond = make_conditioning(backend.manifest, "p").engine_inputs(backend.io_spec, "cpu", torch.float32)
    latent = torch.randn(backend.latent_shape, generator=torch.Generator().manual_seed(0))
    for i in range(6):
        runner.decide(latent, i)
        runner.run(latent, timestep=torch.tensor([1 - i / 6]), **cond)  # cond pass
        runner.run(latent, timestep=torch.tensor([1 - i / 6]), **cond)  # uncond pass
        latent = latent * 0.9
    assert runner.scheduler.observed == 6  # one latent per step, not per pass
    assert [s.engine_calls for s in runner.trace.steps] == [2] * 6
    assert runner.trace.schedule == [2, 2, 2, 8, 8, 8]


def test_runner_refuses_what_the_engines_cannot_do(tiny_flux_backends):
    backend = tiny_flux_backends["onnx"]
    with pytest.raises(ValueError, match=r"patch sizes \[16\] that the onnx backend has no engine for"):
        DDiTRunner(backend, ScheduleConfig(patch_sizes=(2, 4, 16)))
    runner = DDiTRunner(backend, schedule_config(backend))
    with pytest.raises(RuntimeError, match="run before decide"):
        runner.run(torch.zeros(backend.latent_shape))


def test_schedule_config_defaults_come_from_the_manifest(tiny_flux_backends):
    backend = tiny_flux_backends["onnx"]
    cfg = schedule_config(backend)
    assert (cfg.tau, cfg.rho) == (backend.manifest["scheduler"]["tau"], backend.manifest["scheduler"]["rho"])
    assert cfg.patch_sizes == (2, 4, 8) and cfg.base_patch == 2
    assert schedule_config(backend, tau=0.5, rho=0.1).tau == 0.5
