"""ONNX Runtime CPU threading per engine: the choice rule, and the backend really running the modes."""

from __future__ import annotations

import pytest
import torch

from ddit_export.pipelines.registry import make_conditioning
from ddit_export.runtime.backends import BackendError, get_backend
from ddit_export.runtime.backends.ort_cpu_threading import MODES, TUNE_BELOW_SECONDS, choose_modes, session_options


def test_each_engine_takes_its_fastest_mode_and_only_one_spins():
    ms = 1e-3
    timings = {
        2: {"pool": 4.2 * ms, "pool+spin": 3.1 * ms, "single": 3.8 * ms},  # spinning saves 0.7 ms here
        4: {"pool": 1.7 * ms, "pool+spin": 1.2 * ms, "single": 1.3 * ms},  # and 0.1 ms here: it stays calm
        8: {"pool": 1.0 * ms, "pool+spin": 0.8 * ms, "single": 0.7 * ms},
    }
    assert choose_modes(timings) == {2: "pool+spin", 4: "single", 8: "single"}
    # Nobody gains from spinning: nobody spins.
    calm = {p: {**t, "pool+spin": 9 * ms} for p, t in timings.items()}
    assert choose_modes(calm) == {2: "single", 4: "single", 8: "single"}
    # Engines that were not tuned (slow, or not runnable on zeros) keep ORT's own pool.
    assert choose_modes({2: {"pool": 0.5}, 4: {}}) == {2: "pool", 4: "pool"}


def test_session_options_per_mode():
    assert session_options("single").intra_op_num_threads == 1
    assert session_options("pool").intra_op_num_threads == 0  # ORT's choice
    with pytest.raises(ValueError, match="unknown ONNX Runtime CPU threading mode"):
        session_options("fast")


def test_backend_times_every_mode_and_every_mode_predicts_the_same(tiny_flux_engines, tiny_flux_backends):
    auto = tiny_flux_backends["onnx"]
    assert set(auto.cpu_threading) == {2, 4, 8} and set(auto.cpu_threading.values()) <= set(MODES)
    for patch, timings in auto.cpu_threading_seconds.items():
        assert timings["pool"] > 0
        if timings["pool"] < TUNE_BELOW_SECONDS:  # the tiny engines are: all three modes were timed
            assert set(timings) == set(MODES) and auto.cpu_threading[patch] in timings
    assert sum(mode == "pool+spin" for mode in auto.cpu_threading.values()) <= 1
    latent = torch.randn(auto.latent_shape, generator=torch.Generator().manual_seed(0))
    cond = make_conditioning(auto.manifest, "a lighthouse").engine_inputs(auto.io_spec, "cpu", torch.float32)
    cond["timestep"] = torch.full((auto.latent_shape[0],), 0.6)
    for mode in MODES:
        with get_backend("onnx", tiny_flux_engines, cpu_threading=mode) as fixed:
            assert fixed.cpu_threading == {2: mode, 4: mode, 8: mode} and fixed.cpu_threading_seconds[2] == {}
            torch.testing.assert_close(fixed(4, latent, **cond), auto(4, latent, **cond), atol=1e-5, rtol=1e-4)


def test_unknown_threading_mode_is_refused(tiny_flux_engines):
    with pytest.raises(BackendError, match="unknown cpu_threading 'fast': use auto or one of pool, pool"):
        get_backend("onnx", tiny_flux_engines, cpu_threading="fast")


def test_a_slow_engine_is_timed_once_and_keeps_the_pool(tiny_flux_engines, monkeypatch):
    import ddit_export.runtime.backends.ort_cpu_threading as threading

    monkeypatch.setattr(threading, "TUNE_BELOW_SECONDS", 0.0)  # every engine counts as slow
    with get_backend("onnx", tiny_flux_engines) as backend:
        assert backend.cpu_threading == {2: "pool", 4: "pool", 8: "pool"}
        assert all(set(t) == {"pool"} and t["pool"] > 0 for t in backend.cpu_threading_seconds.values())
