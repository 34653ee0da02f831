"""The rule against fixed schedules at equal or higher cost (`demo/quality_eval.py`, tools/demo_quality_eval.py),
and `ddit-export schedules --front-metric fd` on the demo engines."""

import json
from pathlib import Path

import pytest

from ddit_export.bench.end_to_end import schedule_cost
from ddit_export.demo.paired_comparison import load_scores, paired_difference
from ddit_export.demo.quality_eval import fixed_candidates
from tests.tool_runner import run_tool

TOKENS = {2: 256, 4: 64, 8: 16}


@pytest.fixture(autouse=True)
def one_thread(torch_single_thread):
    """Small tensors on a shared 2-core machine: one thread is faster."""


@pytest.fixture(scope="module")
def demo_engines(tmp_path_factory) -> Path:
    from ddit_export.demo.engines import export_demo_engines

    folder = tmp_path_factory.mktemp("demo") / "engines"
    export_demo_engines(folder)
    return folder


def test_fixed_candidates_lie_in_the_cost_band_cheapest_first():
    chosen = fixed_candidates(28, [2, 4, 8], 2, TOKENS, 0.31, 0.34)
    costs = [schedule_cost(list(s), TOKENS, 2) for s in chosen.values()]
    assert chosen and all(0.31 <= c <= 0.34 for c in costs) and costs == sorted(costs)
    assert chosen["coarse-then-base 4x25,2x3"] == (4,) * 25 + (2,) * 3  # the fixed comparison
    assert fixed_candidates(28, [2, 4, 8], 2, TOKENS, 2.0, 3.0) == {}


def _tool(*argv) -> int:
    return run_tool("demo_quality_eval.py", *argv)


def test_tool_evaluates_the_rule_and_named_fixed_schedules_with_intervals(demo_engines, tmp_path, capsys):
    out = tmp_path / "q.json"
    assert _tool(str(demo_engines), "--samples", "9", "--steps", "6", "--seed", "500", "--only-fixed",
                 "--fixed", "4x5,2", "--base-every", "4", "--json", str(out), "--scores", str(tmp_path / "s.npz")) == 0
    report = json.loads(out.read_text())
    assert report["complete"] and report["samples"] == 9 and report["seeds"] == [500, 508]
    rule, fixed = report["rows"][report["rule"]], report["rows"]["coarse-then-base 4x5,2"]
    assert rule["kind"] == "dynamic" and fixed["kind"] == "fixed"
    assert fixed["schedules"] == ["4x5,2"] * 9 and fixed["token_cost"] == pytest.approx((5 / 4 + 1) / 6)
    assert fixed["timed_samples_base"] == 3 and fixed["timed_samples_ddit"] == 9  # base timed every 4th sample
    assert fixed["accuracy_base"] == rule["accuracy_base"] and fixed["fd_base"] == rule["fd_base"]  # one base run
    for row in (rule, fixed):
        for key in ("fd_ddit", "fd_ratio", "accuracy_ddit", "psnr_db", "speedup"):
            assert row[f"{key}_ci"][0] <= row[key] <= row[f"{key}_ci"][1], key
    # the fixed row against the rule, paired by seed, and the same figures from the saved per-sample scores
    vs = fixed["vs_rule"]
    assert vs["samples"] == 9 and vs["accuracy_ddit"] == pytest.approx(fixed["accuracy_ddit"] - rule["accuracy_ddit"])
    assert vs["fd_ddit"] == pytest.approx(fixed["fd_ddit"] - rule["fd_ddit"])
    assert vs["psnr_db"] == pytest.approx(fixed["psnr_db"] - rule["psnr_db"])
    assert set(report["beaten_beyond_interval_by"]) == {"fd_ddit", "accuracy_ddit", "psnr_db"}
    scores = load_scores(tmp_path / "s.npz")
    assert list(scores["rows"]) == [report["rule"], "coarse-then-base 4x5,2"]
    assert scores["seeds"] == list(range(500, 509))
    again = paired_difference(scores["rows"][report["rule"]], scores["rows"]["coarse-then-base 4x5,2"], scores["real"])
    assert again["fd_ddit"] == pytest.approx(vs["fd_ddit"]) and again["fd_ddit_ci"] == pytest.approx(vs["fd_ddit_ci"])
    printed = capsys.readouterr().out
    assert "9 samples per row" in printed and "FD noise floor" in printed
    assert "minus the rule, paired" in printed and "beyond the paired 95% interval" in printed
    # bad input: one line, nothing written
    assert _tool(str(demo_engines), "--only-fixed", "--json", str(tmp_path / "no.json")) == 2
    assert "--only-fixed evaluates the --fixed schedules" in capsys.readouterr().err
    assert _tool(str(demo_engines), "--fixed", "4x9", "--steps", "6", "--json", str(tmp_path / "no.json")) == 2
    assert "--fixed" in capsys.readouterr().err and not (tmp_path / "no.json").exists()


def test_schedules_front_on_fd_on_the_demo(demo_engines, tmp_path):
    from ddit_export.cli import main

    out = tmp_path / "front"
    assert main(["schedules", str(demo_engines), "--steps", "4", "--seeds", "0", "--sizes", "2,4",
                 "--dynamic", "paper@1000", "--front-metric", "fd", "--out", str(out)]) == 0
    report = json.loads((out / "schedules.json").read_text())
    assert report["front_metric"] == "fd"
    points = {p["label"]: p for p in report["points"]}
    front = sorted((p for p in points.values() if p["front"]), key=lambda p: p["token_cost"])
    assert [p["fd"] for p in front] == sorted((p["fd"] for p in front), reverse=True)  # dearer: lower FD
    dynamic = points["paper@1000"]
    assert dynamic["front_metric"] == "fd" and dynamic["front_psnr_at_cost"] is None
    assert isinstance(dynamic["above_front"], bool) and "front on fd" in report["title"]


def test_step_sensitivity_probes_one_coarse_step_at_a_time(demo_engines, tmp_path, capsys):
    out = tmp_path / "sens.json"
    assert run_tool("demo_step_sensitivity.py", str(demo_engines), "--samples", "2", "--steps", "4",
                    "--json", str(out)) == 0
    report = json.loads(out.read_text())
    assert report["size"] == 4 and [(r["sample"], r["step"]) for r in report["rows"]] == [
        (i, k) for i in range(2) for k in range(4)]
    for r in report["rows"]:
        assert r["step_err"] > 0 and r["final_latent"] > 0 and r["features"] > 0  # the coarse step moved the image
        assert sum(x * x for x in r["feature_shift"]) ** 0.5 == pytest.approx(r["features"], rel=1e-5)
    last = [r for r in report["rows"] if r["step"] == 3]
    assert all(r["final_latent"] == pytest.approx(r["step_err"]) for r in last)  # the last step's error is final
    assert "amplification" in capsys.readouterr().out


def test_spectrum_tool_reads_one_for_the_base_schedule_and_less_for_a_blur(demo_engines, tmp_path, capsys):
    import runpy

    import torch

    out = tmp_path / "spectrum.json"
    assert run_tool("demo_spectrum.py", str(demo_engines), "--samples", "2", "--steps", "4", "--fixed", "2x4",
                    "--fixed", "4x4", "--json", str(out)) == 0
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"rule", "fixed 2x4", "fixed 4x4"}
    assert rows["fixed 2x4"]["ratio"] == pytest.approx([1.0] * 4)  # the base's own schedule: the base's power
    for row in rows.values():
        assert all(lo <= r * 1.0001 and r <= hi * 1.0001 for r, lo, hi in zip(row["ratio"], row["ci_low"],
                                                                             row["ci_high"]))
    assert "low -> high" in capsys.readouterr().out
    tool = runpy.run_path(str(Path(__file__).resolve().parents[2] / "tools" / "demo_spectrum.py"))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    smooth = (images + images.roll(1, -1) + images.roll(1, -2) + images.roll((1, 1), (-2, -1))) / 4
    sharp, soft = tool["band_powers"](images), tool["band_powers"](smooth)
    assert sharp.shape == (3, 4) and (soft[:, -1] < 0.3 * sharp[:, -1]).all()
