"""Tests of the DDiT patch-size scheduler: known answers built from controlled third differences."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ddit_export.runtime.scheduler import (
    AccelerationScheduler,
    Decision,
    ScheduleConfig,
    block_statistics,
    select_patch,
)

SIZES = (2, 4, 8)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run(sched: AccelerationScheduler, latents) -> list[Decision]:
    return [sched.step(z, i) for i, z in enumerate(latents)]


def quadratic_latents(steps: int, shape=(1, 4, 16, 16), seed: int = 0) -> list[torch.Tensor]:
    g = gen(seed)
    a, b, c = (torch.randn(shape, generator=g) for _ in range(3))
    ts = [k / steps for k in range(steps)]  # sampler-like time keeps magnitudes (and roundoff) small
    return [a + b * t + c * t * t for t in ts]


def noise_latents(steps: int, shape=(1, 4, 16, 16), seed: int = 0) -> list[torch.Tensor]:
    g = gen(seed)
    return [torch.randn(shape, generator=g) for _ in range(steps)]


def with_d3(pattern: torch.Tensor) -> list[torch.Tensor]:
    """Four latents whose third difference is exactly ``pattern`` (z0..z2 = 0, z3 = pattern)."""
    zero = torch.zeros_like(pattern)
    return [zero, zero, zero, pattern]


# ---------------------------------------------------------------- reference statistic (slow, numpy)


def reference_statistics(d3: torch.Tensor, sizes, rho: float) -> list[float]:
    """Explicit loops over blocks; padding by clamping indices (= replicate); float64 numpy."""
    x = d3.double().numpy()
    if x.ndim == 4:
        x = x[:, :, None]  # B x C x 1 x h x w: one frame
    bsz, _, _, h, w = x.shape
    out = []
    for p in sizes:
        nh, nw = -(-h // p), -(-w // p)
        stds = []
        for b in range(bsz):
            for i in range(nh):
                for j in range(nw):
                    rows = [min(r, h - 1) for r in range(i * p, (i + 1) * p)]
                    cols = [min(c, w - 1) for c in range(j * p, (j + 1) * p)]
                    block = x[b][:, :, rows][:, :, :, cols]
                    stds.append(np.std(block))  # population std over channels, frames, pixels
        s = sorted(stds)
        pos = rho * (len(s) - 1)  # linear interpolation between order statistics
        lo = int(np.floor(pos))
        hi = min(lo + 1, len(s) - 1)
        out.append(s[lo] + (pos - lo) * (s[hi] - s[lo]))
    return out


@pytest.mark.parametrize(
    "shape,sizes",
    [
        ((2, 3, 8, 8), (8, 4)),  # 4-D, divisible
        ((1, 2, 6, 10), (8, 4, 2)),  # 4-D, padded in both directions (and P larger than h)
        ((2, 2, 3, 8, 8), (8, 4)),  # 5-D video, divisible
        ((1, 3, 2, 6, 10), (4, 8)),  # 5-D video, padded
    ],
)
@pytest.mark.parametrize("rho", [0.4, 0.75])
def test_block_statistics_matches_reference(shape, sizes, rho):
    d3 = torch.randn(shape, generator=gen(1)) * torch.linspace(0.1, 2.0, shape[-1])  # uneven blocks
    got = block_statistics(d3, sizes, rho)
    assert got.dtype == torch.float32 and got.shape == (len(sizes),)
    np.testing.assert_allclose(got.numpy(), reference_statistics(d3, sizes, rho), rtol=1e-5, atol=1e-7)


def test_block_statistics_float32_for_low_precision_input():
    d3 = torch.randn((1, 2, 8, 8), generator=gen(2))
    got = block_statistics(d3.to(torch.bfloat16), (4,), 0.4)
    assert got.dtype == torch.float32
    ref = reference_statistics(d3.to(torch.bfloat16).float(), (4,), 0.4)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)


def test_a_nan_anywhere_makes_the_statistic_nan_so_the_base_runs():
    d3 = torch.zeros((1, 2, 8, 8))
    d3[0, 1, 7, 7] = float("nan")  # one block of 16 (p2) or 4 (p4): far above the 0.4 quantile
    stats = block_statistics(d3, (4, 2), 0.4)
    assert torch.isnan(stats).all()  # as torch.quantile: a diverged latent never picks a coarse size
    assert select_patch(dict(zip((4, 2), stats.tolist())), 1.0, 1) == 1


def test_block_statistics_rejects_bad_input():
    with pytest.raises(ValueError, match="B x C x h x w"):
        block_statistics(torch.zeros(2, 8, 8), (4,), 0.4)
    with pytest.raises(ValueError, match="rho"):
        block_statistics(torch.zeros(1, 1, 8, 8), (4,), 1.0)


# ---------------------------------------------------------------- decisions


def test_quadratic_trajectory_picks_coarsest_after_warmup():
    decisions = run(AccelerationScheduler(ScheduleConfig(SIZES, tau=1e-4)), quadratic_latents(10))
    assert [d.patch_size for d in decisions[:3]] == [2, 2, 2]
    for d in decisions[3:]:
        assert d.patch_size == 8
        assert list(d.stats) == [8, 4]  # largest first
        assert max(d.stats.values()) < 1e-5  # d3 of a quadratic is zero up to roundoff


def test_noise_everywhere_forces_base():
    decisions = run(AccelerationScheduler(ScheduleConfig(SIZES)), noise_latents(8))
    for d in decisions[3:]:
        assert d.patch_size == 2
        assert min(d.stats.values()) > 1.0  # std of d3 of unit noise is sqrt(20)


def textured_pattern(n_textured: int, seed: int = 0) -> torch.Tensor:
    """B=2, 32x32 grid: 32 blocks of 8x8; the first ``n_textured`` (item 0 first) carry noise.

    The other blocks hold a random constant each (std 0). Item 0 gets all texture first so that a
    per-item percentile would disagree with the whole-batch percentile.
    """
    g = gen(seed)
    flat = torch.randn(2, 1, 4, 4, generator=g).repeat_interleave(8, -1).repeat_interleave(8, -2)
    pattern = flat.expand(2, 4, 32, 32).clone()  # one constant per block, all channels
    for k in range(n_textured):
        b, i, j = k // 16, (k % 16) // 4, k % 4
        pattern[b, :, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8] += torch.randn(4, 8, 8, generator=g)
    return pattern


# Sizes (2, 8) only: size 4 has 128 blocks and so its own, finer, boundary.
# With 32 blocks and rho = 0.4 the quantile sits at rank 0.4 * 31 = 12.4: between the 13th and
# 14th smallest stds. It is zero while at least 14 blocks are flat, i.e. texture in at most 18
# blocks (18/32 = 0.5625 < 1 - rho); 19 textured blocks (0.59) already lift it above tau.
@pytest.mark.parametrize("n_textured,expected", [(0, 8), (12, 8), (18, 8), (19, 2), (32, 2)])
def test_texture_share_against_rho(n_textured, expected):
    sched = AccelerationScheduler(ScheduleConfig((2, 8), tau=1e-3, rho=0.4))
    decisions = run(sched, with_d3(textured_pattern(n_textured)))
    assert decisions[-1].patch_size == expected
    # 12 textured blocks are 75% of item 0: a per-item percentile would refuse 8 there.
    if expected == 8:
        assert decisions[-1].stats[8] < 1e-6


def test_tau_zero_always_base_and_huge_tau_always_coarsest():
    lat = noise_latents(8)
    zero = run(AccelerationScheduler(ScheduleConfig(SIZES, tau=0.0)), quadratic_latents(8))
    assert all(d.patch_size == 2 for d in zero)
    huge = run(AccelerationScheduler(ScheduleConfig(SIZES, tau=1e30)), lat)
    assert [d.patch_size for d in huge] == [2, 2, 2] + [8] * 5


def test_warmup_default_and_custom():
    lat = noise_latents(5)
    default = run(AccelerationScheduler(ScheduleConfig(SIZES, tau=1e30)), lat)
    assert [(d.patch_size, d.stats) for d in default[:3]] == [(2, None)] * 3
    assert default[3].stats is not None
    custom = run(AccelerationScheduler(ScheduleConfig(SIZES, tau=0.0, warmup_patch=4)), lat)
    assert [(d.patch_size, d.stats) for d in custom[:3]] == [(4, None)] * 3
    assert custom[3].patch_size == 2


def test_base_last_steps():
    cfg = ScheduleConfig(SIZES, tau=1e30, base_last_steps=3)
    decisions = run(AccelerationScheduler(cfg, total_steps=10), noise_latents(10))
    assert [d.patch_size for d in decisions] == [2, 2, 2, 8, 8, 8, 8, 2, 2, 2]
    assert all(d.stats is not None for d in decisions[3:])  # still computed and reported
    with pytest.raises(ValueError, match="needs total_steps"):
        AccelerationScheduler(cfg).step(torch.zeros(1, 1, 8, 8), 0)
    late = AccelerationScheduler(cfg)
    late.reset(total_steps=10)
    assert run(late, noise_latents(10)) == decisions


def test_settle_steps_hold_a_new_size_while_d3_spans_the_switch():
    # Smooth latents with one jolt at step 4: d3 at steps 4..7 contains it (coefficients 1, -3, 3, -1).
    latents = quadratic_latents(10)
    latents[4] = latents[4] + torch.randn(latents[4].shape, generator=gen(5))
    paper = run(AccelerationScheduler(ScheduleConfig(SIZES, tau=1e-3)), latents)
    assert [d.patch_size for d in paper] == [2, 2, 2, 8, 2, 2, 2, 2, 8, 8]
    settled = run(AccelerationScheduler(ScheduleConfig(SIZES, tau=1e-3, settle_steps=2)), latents)
    # 8 from step 3 is kept through 4 and 5; the switch back at 6 is kept through 7 and 8.
    assert [d.patch_size for d in settled] == [2, 2, 2, 8, 8, 8, 2, 2, 2, 8]
    assert [d.stats for d in settled] == [d.stats for d in paper]  # still measured and reported
    forced = ScheduleConfig(SIZES, tau=1e-3, settle_steps=2, base_last_steps=5)
    forced_run = run(AccelerationScheduler(forced, total_steps=10), latents)
    assert [d.patch_size for d in forced_run] == [2, 2, 2, 8, 8] + [2] * 5  # the forced base wins
    with pytest.raises(ValueError, match="settle_steps must be an int >= 0"):
        ScheduleConfig(SIZES, settle_steps=-1)


def test_static_patch():
    decisions = run(AccelerationScheduler(ScheduleConfig(SIZES, static_patch=4)), noise_latents(6))
    assert decisions == [Decision(4, None)] * 6


def test_only_base_size():
    decisions = run(AccelerationScheduler(ScheduleConfig((2,), tau=1e30)), noise_latents(5))
    assert [(d.patch_size, d.stats) for d in decisions[3:]] == [(2, {})] * 2


def test_video_latent_and_padding_grid():
    # 5-D, 6x10 grid: 4 and 8 need padding; a quadratic trajectory stays smooth after padding.
    lat = quadratic_latents(6, shape=(1, 2, 3, 6, 10))
    decisions = run(AccelerationScheduler(ScheduleConfig(SIZES, tau=1e-4)), lat)
    assert [d.patch_size for d in decisions] == [2, 2, 2, 8, 8, 8]


def test_low_precision_latent_keeps_dtype_buffers():
    lat = [z.to(torch.bfloat16) for z in quadratic_latents(6)]
    sched = AccelerationScheduler(ScheduleConfig(SIZES, tau=0.05))
    assert [d.patch_size for d in run(sched, lat)][3:] == [8, 8, 8]
    assert sched._ring.dtype == torch.bfloat16


# ---------------------------------------------------------------- state handling


def test_deterministic_and_reset():
    lat = noise_latents(8, seed=3)
    cfg = ScheduleConfig(SIZES, tau=5.0)
    a, b = AccelerationScheduler(cfg), AccelerationScheduler(cfg)
    first = run(a, lat)
    assert first == run(b, lat)  # identical decisions and bit-identical stats
    a.reset()
    again = [a.step(z, i + 100) for i, z in enumerate(lat)]  # no step 0: only reset() restarts
    assert [d.stats for d in again[:3]] == [None] * 3
    assert again == first


def test_step_zero_starts_new_trajectory():
    sched = AccelerationScheduler(ScheduleConfig(SIZES, tau=1e30))
    run(sched, noise_latents(5))
    assert sched.step(torch.zeros(1, 4, 16, 16), 0).stats is None


def test_ring_reused_and_latent_copied():
    # The sampler may update one latent tensor in place: the ring must hold copies.
    lat = quadratic_latents(8)
    z = torch.empty_like(lat[0])
    sched = AccelerationScheduler(ScheduleConfig(SIZES, tau=1e-4))
    decisions = []
    for i, src in enumerate(lat):
        z.copy_(src)
        decisions.append(sched.step(z, i))
        if i == 0:
            ring_ptr = sched._ring.data_ptr()
    assert [d.patch_size for d in decisions[3:]] == [8] * 5
    assert sched._ring.data_ptr() == ring_ptr  # no reallocation per step


@pytest.mark.parametrize("change", [lambda z: z[:, :, :8], lambda z: z.double(), lambda z: z.unsqueeze(2)])
def test_layout_change_resets(change):
    sched = AccelerationScheduler(ScheduleConfig(SIZES, tau=1e30))
    lat = noise_latents(8)
    run(sched, lat[:5])
    after = [sched.step(change(z), 5 + i) for i, z in enumerate(lat[5:])]
    assert [d.stats for d in after] == [None] * 3  # new warm-up, no crash


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_one_host_sync_per_step_cuda():
    sched = AccelerationScheduler(ScheduleConfig(SIZES))
    lat = [z.cuda() for z in noise_latents(6)]
    run(sched, lat[:4])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sched.step(lat[4], 4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert sum("synchroniz" in str(w.message) for w in caught) <= 1


# ---------------------------------------------------------------- configuration


def test_select_patch():
    assert select_patch({8: 0.5, 4: 0.1}, 0.2, 2) == 4
    assert select_patch({8: 0.1, 4: 0.1}, 0.2, 2) == 8
    assert select_patch({8: float("nan"), 4: 0.3}, 0.2, 2) == 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"patch_sizes": ()}, "must not be empty"),
        ({"patch_sizes": (2, 4, 4)}, "duplicates"),
        ({"patch_sizes": (2, 0)}, "positive ints"),
        ({"patch_sizes": (4, 8)}, "base_patch=2 is not in patch_sizes"),
        ({"patch_sizes": (2, 3, 4)}, r"\[3\] are not multiples of base_patch=2"),
        ({"patch_sizes": SIZES, "rho": 0.0}, "rho must be a fraction"),
        ({"patch_sizes": SIZES, "rho": 1.0}, "rho must be a fraction"),
        ({"patch_sizes": SIZES, "tau": -1e-3}, "tau must be >= 0"),
        ({"patch_sizes": SIZES, "tau": float("nan")}, "tau must be >= 0"),
        ({"patch_sizes": SIZES, "warmup_patch": 16}, "warmup_patch=16 is not in patch_sizes"),
        ({"patch_sizes": SIZES, "static_patch": 6}, "static_patch=6 is not in patch_sizes"),
        ({"patch_sizes": SIZES, "base_last_steps": -1}, "base_last_steps must be an int >= 0"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScheduleConfig(**kwargs)


def test_scheduler_argument_errors():
    with pytest.raises(ValueError, match="total_steps must be a positive int"):
        AccelerationScheduler(ScheduleConfig(SIZES), total_steps=0)
    sched = AccelerationScheduler(ScheduleConfig(SIZES))
    with pytest.raises(ValueError, match="step_index must be an int >= 0"):
        sched.step(torch.zeros(1, 1, 8, 8), -1)
    with pytest.raises(ValueError, match="latent must be"):
        sched.step(torch.zeros(8, 8), 0)


def test_config_accepts_list_and_orders_candidates():
    cfg = ScheduleConfig([2, 8, 4])
    assert cfg.patch_sizes == (2, 8, 4)
    assert cfg.candidates == (8, 4)


def test_schedule_settings_serialise_every_field_and_round_trip():
    """generate's trace.json records `ScheduleConfig.to_json()`: every setting, readable back into the same config."""
    import json

    config = ScheduleConfig(patch_sizes=(2, 4, 8), tau=2e-3, rho=0.5, warmup_patch=8, base_last_steps=2,
                            settle_steps=1, statistic="detail", monotone=True, size_scaled_tau=True)
    settings = json.loads(json.dumps(config.to_json()))
    assert settings["patch_sizes"] == [2, 4, 8] and settings["settle_steps"] == 1 and "error_model" not in settings
    assert ScheduleConfig(**settings) == config
    fixed = ScheduleConfig(patch_sizes=(2, 4), fixed=(4, 4, 2))
    assert ScheduleConfig(**fixed.to_json()) == fixed
