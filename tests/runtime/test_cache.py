"""Step caching composed with DDiT on staged engines: TeaCache and first-block caching (runtime/cache/).

Tiny FLUX and Wan staged folders with random adapters (so each size's trunk differs), built once.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddit_export.bench.cache_fit import Pair, fit_polynomial
from ddit_export.cli import main
from ddit_export.export.build import export_engines
from ddit_export.export.request import ExportRequest
from ddit_export.pipelines import generate, make_conditioning
from ddit_export.runtime.backends import get_backend
from ddit_export.runtime.cache import StepCache, parse_cache
from ddit_export.runtime.cache.coefficients import FLUX_DEV, WAN21_T2V_1_3B, teacache_coefficients
from ddit_export.runtime.cache.state import BranchState
from ddit_export.runtime.cache.teacache import TeaCachePolicy
from ddit_export.runtime.runner import schedule_config

HUGE = 1e9  # a threshold that skips every step it may


def _export(root, family, layout, **geometry):
    from ddit_export.ddit.adapter_pack import save_adapter_pack
    from tests.export.test_staged_layout import _tiny_model

    pack = root / f"{family}-pack"
    save_adapter_pack(_tiny_model(family), pack, base_model="tiny")
    out = root / f"{family}-{layout}"
    export_engines(ExportRequest(family=family, model="tiny", patch_sizes=(2, 4, 8), adapters=str(pack),
                                 dtype="fp32", out=str(out), layout=layout, **geometry))
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        flux = dict(height=128, width=128, text_len=8)
        return {"flux": _export(root, "flux", "staged", **flux),
                "flux-single": _export(root, "flux", "single", **flux),
                "wan": _export(root, "wan", "staged", frames=5, height=96, width=160, text_len=8)}
    finally:
        torch.set_num_threads(before)


def _run(backend, cache=None, steps=8, schedule=None, tau=0.05, prompt="a fox"):
    cond = make_conditioning(backend.manifest, prompt)
    config = schedule_config(backend, schedule=schedule) if schedule else schedule_config(backend, tau=tau)
    return generate(backend, cond, config, steps=len(schedule) if schedule else steps, seed=1, cache=cache)


# -- decisions ---------------------------------------------------------------------------------------

def _reference_teacache(signals, threshold, coefficients):
    """TeaCache4FLUX's loop as published (np.poly1d on the rel-L1 change, accumulated, reset on compute)."""
    rescale, decisions, acc, prev = np.poly1d(coefficients), [], 0.0, None
    for cnt, s in enumerate(signals):
        if cnt == 0 or cnt == len(signals) - 1:
            calc, acc = True, 0.0
        else:
            acc += rescale(float((s - prev).abs().mean() / prev.abs().mean()))
            calc = not acc < threshold
            if calc:
                acc = 0.0
        prev = s
        decisions.append(calc)
    return decisions


@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.25, 0.6])
def test_teacache_decisions_equal_the_published_loop(threshold):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 16, 32, generator=g)
    signals = [base + 0.02 * k * torch.randn(1, 16, 32, generator=g) for k in range(20)]
    policy, state = TeaCachePolicy(threshold, FLUX_DEV), BranchState(residual=torch.zeros(1))
    got = [policy.should_compute(state, s, i, len(signals)) for i, s in enumerate(signals)]
    assert got == _reference_teacache(signals, threshold, FLUX_DEV)
    if threshold >= 0.25:
        assert not all(got), "the sequence must exercise skipping"


def test_parse_cache_and_its_refusals():
    assert str(parse_cache("teacache:0.25")) == "teacache:0.25" and parse_cache("fbcache").threshold == 0.05
    assert parse_cache("none") is None and parse_cache(None) is None
    for bad in ("tea:1", "teacache:-1", "teacache:x", "fbcache:nan", "none:1"):
        with pytest.raises(ValueError):
            parse_cache(bad)


# -- exactness ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend_name, spec",
                         [("torch", "teacache:0"), ("onnx", "teacache:0"), ("torch", "fbcache:0")])
def test_threshold_zero_equals_the_uncached_run_bit_for_bit(folders, backend_name, spec, torch_single_thread):
    with get_backend(backend_name, folders["flux"]) as backend:
        ref = _run(backend)
        got = _run(backend, StepCache(backend, parse_cache(spec), coefficients=FLUX_DEV))
    assert len(set(ref.trace.schedule)) > 1, "the run must switch sizes"
    assert got.trace.schedule == ref.trace.schedule and not any(got.trace.cached)
    assert torch.equal(got.latent, ref.latent)


@pytest.mark.parametrize("spec", ["teacache", "fbcache"])
def test_a_cached_step_is_the_head_on_new_tokens_plus_the_stored_residual(folders, spec, torch_single_thread):
    with get_backend("torch", folders["flux"]) as backend:
        cache = StepCache(backend, parse_cache(f"{spec}:{HUGE}"), coefficients=FLUX_DEV)
        cond = make_conditioning(backend.manifest, "a fox").engine_inputs(backend.io_spec, "cpu", torch.float32)
        x0, x1 = torch.randn(backend.latent_shape), torch.randn(backend.latent_shape)
        t0, t1 = torch.tensor([0.9]), torch.tensor([0.85])
        _, cached = cache(4, x0, step=0, total_steps=10, timestep=t0, **cond)
        assert not cached
        full = backend.run_trunk(4, backend.run_embed(4, x0, timestep=t0, **cond))
        state = cache.states.get(4, "0")
        if spec == "teacache":
            assert torch.equal(state.residual, full["block_residual"])
        pred, cached = cache(4, x1, step=1, total_steps=10, timestep=t1, **cond)
        assert cached
        values = backend.run_embed(4, x1, timestep=t1, **cond)
        if spec == "teacache":
            values["trunk_tokens"] = values["tokens"] + full["block_residual"]
        else:
            head = backend.run_first_block(4, values)
            values = {**head, "trunk_tokens": head["head_tokens"] + state.residual}
        assert torch.equal(pred, backend.run_head(4, values, x1.device))
        uncached = backend(4, x1, timestep=t1, **cond)
        assert not torch.equal(pred, uncached)


@pytest.mark.parametrize("spec", ["teacache", "fbcache"])
def test_a_size_switch_is_never_served_from_another_sizes_residual(folders, spec, torch_single_thread):
    with get_backend("torch", folders["flux"]) as backend:
        cache = StepCache(backend, parse_cache(f"{spec}:{HUGE}"), coefficients=FLUX_DEV)
        alternating = _run(backend, cache, schedule=(2, 2, 4, 4, 2, 2, 8, 8, 4, 4, 2, 2))
        cached = alternating.trace.cached
        # every first step at a size runs in full (the size's state was dropped); its second may be cached
        assert cached[0::2] == [False] * 6 and any(cached[1::2])
        assert cache.states.patch == 2 and set(cache.states._states) == {"0"}
        steady = _run(backend, cache, schedule=(4,) * 12)
    assert sum(steady.trace.cached) > sum(cached), "a steady size must cache more than alternating sizes"


def test_trace_json_and_step_records_carry_the_cache_flag(folders, torch_single_thread):
    with get_backend("onnx", folders["flux"]) as backend:
        result = _run(backend, StepCache(backend, parse_cache(f"teacache:{HUGE}"), coefficients=FLUX_DEV),
                      schedule=(2,) * 6)
    data = result.trace.to_json()
    assert data["cached"] == [False, True, True, True, True, False]  # first and last steps always run
    assert [s["cached"] for s in data["steps"]] == data["cached"]


# -- Wan: one state per guidance branch --------------------------------------------------------------

def test_wan_keeps_one_state_per_cfg_branch_and_threshold_zero_is_exact(folders, torch_single_thread):
    with get_backend("torch", folders["wan"]) as backend:
        ref = _run(backend, steps=6)
        assert ref.cfg == "two-calls"
        exact = _run(backend, StepCache(backend, parse_cache("teacache:0"), coefficients=WAN21_T2V_1_3B), steps=6)
        assert torch.equal(exact.latent, ref.latent)
        cache = StepCache(backend, parse_cache(f"teacache:{HUGE}"), coefficients=WAN21_T2V_1_3B)
        result = _run(backend, cache, schedule=(2,) * 6)
        assert set(cache.states._states) == {"cond", "uncond"}
        assert [s.cached_calls for s in result.trace.steps] == [0, 2, 2, 2, 2, 0]
        fb = StepCache(backend, parse_cache(f"fbcache:{HUGE}"))
        assert any(_run(backend, fb, schedule=(4,) * 4).trace.cached)


# -- the calibrated polynomial -----------------------------------------------------------------------

def test_fit_recovers_a_known_polynomial():
    want = [50.0, -20.0, 3.0, 0.5, 0.01]
    xs = np.linspace(0.01, 0.3, 40)
    fit = fit_polynomial([Pair(2, i, float(x), float(np.polyval(want, x))) for i, x in enumerate(xs)])
    assert np.allclose(fit["coefficients"], want, rtol=1e-5, atol=1e-6) and fit["r2"] > 0.999999


def test_calibrate_cache_stores_the_fit_that_teacache_then_uses(folders, tmp_path, torch_single_thread):
    import shutil

    folder = tmp_path / "flux"
    shutil.copytree(folders["flux"], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    with pytest.raises(ValueError, match="calibrate ENGINE_DIR --cache"):
        teacache_coefficients(manifest)  # the tiny model has no published polynomial
    assert main(["calibrate", str(folder), "--cache", "--steps", "6", "--seeds", "0",
                 "--out", str(tmp_path / "o")]) == 0
    stored = json.loads((folder / "manifest.json").read_text())["cache"]["teacache"]
    assert len(stored["coefficients"]) == 5 and stored["pairs"] == 3 * 5
    fit = json.loads((tmp_path / "o" / "cache_fit.json").read_text())
    assert fit["coefficients"] == stored["coefficients"] and len(fit["step_pairs"]) == 15
    with get_backend("onnx", folder) as backend:
        cache = StepCache(backend, parse_cache("teacache:0.3"))
        assert cache.coefficients_source.startswith("calibrated")
        assert list(cache.policy.coefficients) == stored["coefficients"]
    assert main(["generate", str(folder), "--cache", "teacache:0.3", "--steps", "6", "--out", str(tmp_path / "g")]) == 0
    trace = json.loads((tmp_path / "g" / "trace.json").read_text())
    assert len(trace["cached"]) == 6 and trace["cache"]["kind"] == "teacache"


# -- refusals ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("folder_key, extra, message", [
    ("flux-single", ["--cache", "teacache:0.25"], "re-export it with --layout staged"),
    ("flux", ["--cache", "fbcache:0.05"], "trunk split after block 0"),
    ("flux", ["--cache", "tea:1"], "teacache, fbcache or none"),
])
def test_bad_cache_input_is_one_line_and_exit_2(folders, tmp_path, capsys, folder_key, extra, message):
    try:
        code = main(["generate", str(folders[folder_key]), "--steps", "4", "--out", str(tmp_path / "o"), *extra])
    except SystemExit as exit:  # refused while parsing the arguments
        code = exit.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_dropins_accept_the_same_cache_and_refuse_a_single_folder(folders):
    from ddit_export.pipelines.flux_dropin import DDiTFluxTransformer
    from ddit_export.runtime.backends.base import BackendError

    with get_backend("onnx", folders["flux-single"]) as backend, pytest.raises(BackendError, match="--layout staged"):
        DDiTFluxTransformer(backend, cache="teacache:0.25")
    with get_backend("onnx", folders["flux"]) as backend:
        assert DDiTFluxTransformer(backend, cache="none").runner.cache is None
        with pytest.raises(ValueError, match="calibrate ENGINE_DIR --cache"):  # tiny: no published polynomial
            DDiTFluxTransformer(backend, cache="teacache:0.25")


# -- bench: the four-way table -------------------------------------------------------------------------

def _calibrated_copy(folders, key, tmp_path):
    import shutil

    folder = tmp_path / key
    shutil.copytree(folders[key], folder)
    assert main(["calibrate", str(folder), "--cache", "--steps", "6", "--seeds", "0",
                 "--out", str(tmp_path / f"fit-{key}")]) == 0
    return folder


@pytest.mark.parametrize("key, backend_name, spec", [("flux", "onnx", "teacache:0.3"), ("wan", "torch", "fbcache:0.3")])
def test_bench_cache_reports_base_cache_ddit_and_both_side_by_side(folders, tmp_path, key, backend_name, spec,
                                                                  torch_single_thread):
    folder = _calibrated_copy(folders, key, tmp_path) if spec.startswith("teacache") else folders[key]
    out = tmp_path / "bench"
    assert main(["bench", str(folder), "--backends", backend_name, "--cache", spec, "--steps", "8", "--seeds", "0,1",
                 "--warmup", "1", "--iters", "2", "--no-eager", "--tau", "0.05", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())["end_to_end"]
    table = report["cache_table"]
    assert list(table) == ["static", "cache", "dynamic", "dynamic_cache"]
    assert report["cache"]["kind"] == spec.split(":")[0]
    assert table["static"]["cached_steps"] == 0 and table["dynamic"]["cached_steps"] == 0
    assert table["cache"]["cached_steps"] > 0 and table["cache"]["token_cost"] == 1.0
    assert table["dynamic"]["token_cost"] < 1.0  # DDiT picked coarser sizes
    for mode in ("cache", "dynamic", "dynamic_cache"):
        assert table[mode]["psnr_db"] > 0 and table[mode]["speedup_vs_static"] > 0
    sp = report["speedups"]
    assert sp["dynamic_cache_vs_dynamic"] == pytest.approx(
        report["modes"]["dynamic"]["seconds_per_image"] / table["dynamic_cache"]["seconds_per_image"])
    assert len(report["modes"]["dynamic_cache"]["cached"]["0"]) == 8
    md = (out / "bench.md").read_text()
    assert f"DDiT + {spec.split(':')[0]}" in md and "steps cached" in md


def test_bench_cache_threshold_zero_is_the_uncached_run(folders, tmp_path, torch_single_thread):
    out = tmp_path / "bench"
    assert main(["bench", str(folders["wan"]), "--backends", "torch", "--cache", "fbcache:0", "--steps", "6",
                 "--seeds", "0", "--warmup", "0", "--iters", "1", "--no-eager", "--tau", "0.05",
                 "--out", str(out)]) == 0
    table = json.loads((out / "bench.json").read_text())["end_to_end"]["cache_table"]
    assert table["cache"]["cached_steps"] == 0 and table["cache"]["psnr_db"] == float("inf")
    assert table["dynamic_cache"]["psnr_db"] == table["dynamic"]["psnr_db"]


def test_bench_cache_refuses_a_single_folder_with_the_fix(folders, tmp_path, capsys):
    code = main(["bench", str(folders["flux-single"]), "--backends", "onnx", "--cache", "teacache:0.25",
                 "--steps", "4", "--warmup", "0", "--iters", "1", "--no-eager", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "re-export it with --layout staged" in err


# -- DDiT's schedule under caching -------------------------------------------------------------------

def test_hold_keeps_the_size_after_a_cached_step_and_warmup_steps_always_run(folders, torch_single_thread):
    with get_backend("torch", folders["flux"]) as backend:
        ref = _run(backend, steps=12)
        assert len(set(ref.trace.schedule)) > 1, "the run must switch sizes"
        zero = _run(backend, StepCache(backend, parse_cache("teacache:0"), coefficients=FLUX_DEV, schedule="hold"),
                    steps=12)
        assert zero.trace.schedule == ref.trace.schedule  # nothing cached: nothing held
        held = _run(backend, StepCache(backend, parse_cache(f"teacache:{HUGE}"), coefficients=FLUX_DEV,
                                       schedule="hold"), steps=12)
        sizes, cached = held.trace.schedule, held.trace.cached
        assert any(cached)
        for i in range(1, len(sizes)):
            if cached[i - 1]:
                assert sizes[i] == sizes[i - 1], f"step {i} follows a cached step but changed size"
        warm = _run(backend, StepCache(backend, parse_cache(f"teacache:{HUGE}"), coefficients=FLUX_DEV,
                                       warmup_steps=4), steps=12)
        assert warm.trace.cached[:4] == [False] * 4 and any(warm.trace.cached[4:])
    with pytest.raises(ValueError, match="observe, hold"):
        StepCache(backend, parse_cache("teacache:0.1"), coefficients=FLUX_DEV, schedule="never")
