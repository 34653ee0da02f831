"""Fixed schedules, the dynamic rules' new pieces, and `ddit-export schedules` against fixed fronts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddit_export.bench.schedules import SchedulePoint, fixed_families, front_at, mark_front
from ddit_export.runtime.schedule_spec import check_schedule, format_schedule, parse_schedule
from ddit_export.runtime.scheduler import RULES, AccelerationScheduler, ScheduleConfig, block_statistics

# ---------------------------------------------------------------- the spec


@pytest.mark.parametrize("text,expected", [
    ("8x2,2x3", (8, 8, 2, 2, 2)),
    ("2,2,4", (2, 2, 4)),
    ("2x2, 4, 8x1", (2, 2, 4, 8)),
    ("4", (4,)),
])
def test_parse_schedule_run_lengths_and_lists(text, expected):
    assert parse_schedule(text) == expected
    assert parse_schedule(format_schedule(expected)) == expected


@pytest.mark.parametrize("text,match", [
    ("", "empty"),
    ("8y4", "not SIZE or SIZExSTEPS"),
    ("8x0", "positive"),
    ("0x3", "positive"),
    ("4,,2", "not SIZE"),
    ("2x20000", "more than"),
])
def test_parse_schedule_refuses_bad_text_naming_the_flag(text, match):
    with pytest.raises(ValueError, match=match) as err:
        parse_schedule(text, flag="--schedule")
    assert "--schedule" in str(err.value)


def test_check_schedule_sizes_and_length():
    check_schedule((8, 2), (2, 4, 8), 2)
    with pytest.raises(ValueError, match=r"patch size\(s\) \[16\]"):
        check_schedule((16, 2), (2, 4, 8), 2)
    with pytest.raises(ValueError, match=r"gives 2 steps \(8,2\) but sampling runs 3"):
        check_schedule((8, 2), (2, 4, 8), 3)


def test_format_schedule():
    assert format_schedule([4] * 25 + [2] * 3) == "4x25,2x3"
    assert format_schedule([2, 4, 2]) == "2,4,2"


# ---------------------------------------------------------------- the scheduler


def test_fixed_schedule_is_followed_step_by_step_and_has_no_stats():
    fixed = (8, 8, 4, 2)
    sched = AccelerationScheduler(ScheduleConfig((2, 4, 8), fixed=fixed), total_steps=4)
    decisions = [sched.step(torch.randn(1, 3, 8, 8), i) for i in range(4)]
    assert [d.patch_size for d in decisions] == list(fixed) and all(d.stats is None for d in decisions)
    with pytest.raises(ValueError, match="has 4 steps; step 4"):
        sched.step(torch.randn(1, 3, 8, 8), 4)


def test_fixed_schedule_errors():
    with pytest.raises(ValueError, match="sizes \\[16\\]"):
        ScheduleConfig((2, 4), fixed=(16, 2))
    with pytest.raises(ValueError, match="not both"):
        ScheduleConfig((2, 4), fixed=(4, 2), static_patch=2)
    with pytest.raises(ValueError, match="has 2 steps but sampling runs 3"):
        AccelerationScheduler(ScheduleConfig((2, 4), fixed=(4, 2)), total_steps=3)


def _loop_detail(d3: torch.Tensor, p: int, rho: float) -> float:
    """Loop reference of the "detail" statistic: per block, remove each channel's (and frame's) mean, then std."""
    x = d3.double().numpy()
    if x.ndim == 4:
        x = x[:, :, None]
    bsz, _, _, h, w = x.shape
    stds = []
    for b in range(bsz):
        for i in range(-(-h // p)):
            for j in range(-(-w // p)):
                rows = [min(r, h - 1) for r in range(i * p, (i + 1) * p)]
                cols = [min(c, w - 1) for c in range(j * p, (j + 1) * p)]
                block = x[b][:, :, rows][:, :, :, cols]
                block = block - block.mean(axis=(2, 3), keepdims=True)
                stds.append(np.sqrt((block**2).mean()))
    return float(np.quantile(np.array(stds), rho))


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 6, 10), (1, 3, 2, 6, 10)])
def test_detail_statistic_matches_a_loop_reference(shape):
    d3 = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * torch.linspace(0.1, 2.0, shape[-1])
    got = block_statistics(d3, (8, 4), 0.4, statistic="detail")
    np.testing.assert_allclose(got.numpy(), [_loop_detail(d3, 8, 0.4), _loop_detail(d3, 4, 0.4)], rtol=1e-5)


def test_detail_statistic_ignores_a_uniform_change_that_the_plain_std_sees():
    # d3 constant per channel: a P x P token holds it exactly, so "detail" is 0 while the paper's std is not.
    d3 = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1).expand(1, 3, 16, 16).contiguous()
    assert block_statistics(d3, (4, 8), 0.4, "detail").abs().max() < 1e-6
    assert block_statistics(d3, (4, 8), 0.4, "std").min() > 1.0


def test_detail_statistic_separates_sizes_for_structure_between_them():
    # A checkerboard of 4 x 4 cells: constant inside every 4-block, varying inside every 8-block.
    y, x = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    d3 = (((y // 4 + x // 4) % 2) * 2.0 - 1).expand(1, 3, 16, 16).contiguous()
    stat8, stat4 = block_statistics(d3, (8, 4), 0.4, "detail").tolist()
    assert stat4 < 1e-6 and stat8 > 0.9


def test_monotone_never_goes_back_to_a_coarser_size():
    # After warm-up at the coarsest size, a noisy step forces the base; smooth steps after it stay at the base.
    smooth = [torch.full((1, 3, 16, 16), float(k)) for k in range(10)]  # the spike leaves d3's window at step 8
    noisy = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 10
    latents = smooth[:4] + [smooth[4] + noisy] + smooth[5:]
    cfg = ScheduleConfig((2, 4, 8), tau=1e-3, warmup_patch=8, monotone=True)
    free = ScheduleConfig((2, 4, 8), tau=1e-3, warmup_patch=8, monotone=False)
    sched = AccelerationScheduler(cfg)
    ratchet = [sched.step(z, i).patch_size for i, z in enumerate(latents)]
    sched = AccelerationScheduler(free)
    bouncing = [sched.step(z, i).patch_size for i, z in enumerate(latents)]
    assert ratchet[:4] == [8, 8, 8, 8] and set(ratchet[4:]) == {2}
    assert bouncing[4] == 2 and bouncing[-1] == 8  # the paper's rule goes coarse again once d3 is smooth


def test_rules_are_named_presets_with_the_paper_rule_kept():
    assert RULES["paper"] == {"statistic": "std", "warmup": "base", "monotone": False}
    assert set(RULES) == {"paper", "coarse-to-fine", "predicted-error"}


def _reference_coarse_to_fine(latents, sizes, base, tau, rho, settle):
    """The coarse-to-fine rule written out as loops, from the block stds of each step's d3."""
    out, hold = [], 0
    for k, z in enumerate(latents):
        if k < 3:
            out.append(max(sizes))
            continue
        if hold:
            hold -= 1
            out.append(out[-1])
            continue
        d3 = z - 3 * latents[k - 1] + 3 * latents[k - 2] - latents[k - 3]
        stats = {p: block_statistics(d3, (p,), rho)[0].item() for p in sizes if p != base}
        passing = [p for p, v in stats.items() if v < tau * 2 * base / p]
        pick = min(max(passing) if passing else base, out[-1])
        if pick != out[-1]:
            hold = settle
        out.append(pick)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coarse_to_fine_rule_matches_a_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    # d3 that grows along the trajectory, as on the demo: smooth early, detail late.
    latents = [torch.randn(1, 3, 16, 16, generator=g) * (0.002 * k * k) for k in range(20)]
    latents = [sum(latents[: k + 1]) for k in range(20)]
    cfg = ScheduleConfig((2, 4, 8), tau=0.5, rho=0.9, warmup_patch=8, monotone=True, size_scaled_tau=True,
                         settle_steps=3)
    sched = AccelerationScheduler(cfg)
    got = [sched.step(z, i).patch_size for i, z in enumerate(latents)]
    assert got == _reference_coarse_to_fine(latents, (2, 4, 8), 2, 0.5, 0.9, 3)
    assert got[0] == 8 and got == sorted(got, reverse=True) and len(set(got)) >= 2


# ---------------------------------------------------------------- families and the front


def test_fixed_families_cover_each_family_once_per_schedule():
    families = fixed_families(12, [2, 4, 8], 2)
    schedules = list(families.values())
    assert len(schedules) == len(set(schedules))  # no schedule twice under two names
    assert all(len(s) == 12 for s in schedules)
    names = {label.split(" ")[0] for label in families}
    assert names == {"coarse-then-base", "base-then-coarse", "spread", "mixed"}
    assert families["coarse-then-base 4x9,2x3"] == (4,) * 9 + (2,) * 3
    assert families["base-then-coarse 2x3,8x9"] == (2,) * 3 + (8,) * 9
    mixed = [s for label, s in families.items() if label.startswith("mixed")]
    assert mixed and all(list(s) == sorted(s, reverse=True) and set(s) == {2, 4, 8} for s in mixed)


def _point(label, kind, cost, psnr):
    return SchedulePoint(label, kind, [[2]], token_cost=cost, psnr=psnr)


def test_front_marking_and_placement_of_dynamic_points():
    points = [_point("base", "base", 1.0, float("inf")), _point("a", "fixed", 0.3, 20.0),
              _point("b", "fixed", 0.5, 25.0), _point("c", "fixed", 0.5, 22.0), _point("d", "fixed", 0.7, 30.0),
              _point("above", "dynamic", 0.4, 23.0), _point("under", "dynamic", 0.6, 26.0),
              _point("beaten", "dynamic", 0.55, 24.0)]
    mark_front(points)
    by = {p.label: p for p in points}
    assert [p.label for p in points if p.front] == ["base", "a", "b", "d"]
    assert by["above"].above_front and by["above"].front_psnr_at_cost == pytest.approx(22.5)
    assert not by["under"].above_front and by["under"].front_psnr_at_cost == pytest.approx(27.5)
    assert not by["beaten"].above_front  # fixed "b" is cheaper and better



def _scored(label, kind, cost, fd, accuracy):
    return SchedulePoint(label, kind, [[2]], token_cost=cost, psnr=30.0 - 10 * cost,
                         scores={"fd": fd, "accuracy": accuracy})


def test_front_on_fd_is_lower_is_better_and_differs_from_the_psnr_front():
    points = [_scored("base", "base", 1.0, 100.0, 0.9), _scored("a", "fixed", 0.3, 150.0, 0.8),
              _scored("b", "fixed", 0.5, 160.0, 0.85), _scored("c", "fixed", 0.7, 120.0, 0.7),
              _scored("rule", "dynamic", 0.4, 140.0, 0.75), _scored("worse", "dynamic", 0.6, 155.0, 0.95)]
    by = {p.label: p for p in mark_front(points, "fd")}
    assert [p.label for p in points if p.front] == ["base", "a", "c"]  # b: dearer than a and a higher FD
    assert by["rule"].front_at_cost == pytest.approx(150.0 + (0.4 - 0.3) / (0.7 - 0.3) * (120.0 - 150.0))
    assert by["rule"].above_front and by["rule"].front_metric == "fd" and by["rule"].front_psnr_at_cost is None
    assert not by["worse"].above_front  # a is cheaper with a lower FD
    by = {p.label: p for p in mark_front(points, "accuracy")}
    assert [p.label for p in points if p.front] == ["base", "a", "b"]
    assert by["worse"].above_front and not by["rule"].above_front
    by = {p.label: p for p in mark_front(points, "psnr")}  # psnr falls with cost here: only the cheapest is front
    assert [p.label for p in points if p.front] == ["a"] and by["rule"].front_psnr_at_cost == pytest.approx(27.0)
    assert by["rule"].row()["front_metric"] == "psnr"


def test_front_metric_needs_the_score_and_a_known_name():
    plain = [_point("base", "base", 1.0, float("inf")), _point("a", "fixed", 0.3, 20.0)]
    with pytest.raises(ValueError, match="no fd score.*--front-metric psnr"):
        mark_front(plain, "fd")
    with pytest.raises(ValueError, match="unknown front metric 'ssim'"):
        mark_front(plain, "ssim")


def test_front_at_between_and_beyond_points():
    front = [_point("a", "fixed", 0.2, 10.0), _point("b", "fixed", 0.6, 30.0),
             _point("base", "base", 1.0, float("inf"))]
    assert front_at(front, 0.1) is None
    assert front_at(front, 0.4) == pytest.approx(20.0)
    assert front_at(front, 0.8) == pytest.approx(30.0)  # next to the base: the lower point's PSNR


# ---------------------------------------------------------------- the command on tiny engines


def test_schedules_command_on_tiny_engines(tiny_flux_engines, tmp_path, capsys):
    from ddit_export.cli import main

    out = tmp_path / "report"
    code = main(["schedules", str(tiny_flux_engines), "--steps", "6", "--seeds", "0", "--dynamic", "paper@0.001",
                 "--dynamic", "paper@1000", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "schedules.json").read_text())
    points = {p["label"]: p for p in report["points"]}
    # tau 1000: the paper's rule runs the base for 3 warm-up steps, then the coarsest size: a fixed schedule.
    coarse = points["paper@1000"]
    assert coarse["kind"] == "dynamic" and coarse["schedules"] == ["2x3,8x3"]
    assert coarse["same_as"] == "base-then-coarse 2x3,8x3" and coarse["above_front"] is False
    assert coarse["token_cost"] == pytest.approx((3 * 64 + 3 * 4) / (6 * 64))
    assert points["static base"]["token_cost"] == 1.0 and points["static base"]["psnr_db"] == "inf"
    fixed = [p for p in report["points"] if p["kind"] == "fixed"]
    assert fixed and any(p["front"] for p in fixed)
    assert (out / "schedules.png").stat().st_size > 0 and "| schedule |" in (out / "schedules.md").read_text()


def test_schedules_command_refuses_bad_input(tiny_flux_engines, tmp_path, capsys):
    from ddit_export.cli import main

    assert main(["schedules", str(tiny_flux_engines), "--dynamic", "nosuch@1", "--out", str(tmp_path)]) == 2
    assert "RULE@TAU" in capsys.readouterr().err
    assert main(["schedules", str(tiny_flux_engines), "--steps", "2", "--out", str(tmp_path)]) == 2
    assert "at least 4" in capsys.readouterr().err
    assert main(["schedules", str(tmp_path / "missing")]) == 2
    # --front-metric: a name outside the choices, and FD on a model without a classifier, refused before sampling
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["schedules", str(tiny_flux_engines), "--front-metric", "ssim", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "choose from" in err
    assert main(["schedules", str(tiny_flux_engines), "--front-metric", "fd", "--out", str(tmp_path / "fd")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no classifier" in err and "--front-metric psnr" in err
    assert not (tmp_path / "fd").exists() and not (tmp_path / "m").exists()


def test_schedules_command_on_tiny_wan_engines(tiny_wan_engines, tmp_path):
    from ddit_export.cli import main

    out = tmp_path / "report"
    assert main(["schedules", str(tiny_wan_engines), "--steps", "4", "--seeds", "0", "--dynamic", "paper@1000",
                 "--out", str(out)]) == 0
    points = {p["label"]: p for p in json.loads((out / "schedules.json").read_text())["points"]}
    assert points["paper@1000"]["schedules"] == ["2x3,8"]
    assert {p["kind"] for p in points.values()} == {"base", "fixed", "dynamic"}
