"""Paired differences between two configurations on the same seeds (`demo/paired_comparison.py`) and
tools/compare_quality_runs.py on saved per-sample scores."""

import json

import numpy as np
import pytest

from ddit_export.bench.bootstrap import mean_ci, psnr_of_mse
from ddit_export.bench.quality import frechet_distance
from ddit_export.demo.paired_comparison import Scored, load_scores, paired_difference, save_scores
from tests.tool_runner import run_tool


def _pair(shift: float, flips: int, n: int = 240, seed: int = 0):
    """A and B sharing most of each sample (as two configurations on one seed do), B shifted by ``shift``
    in feature space and right on ``flips`` more samples."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal((n, 5)) * 3  # what the seed decides: far larger than the configurations' gap
    right_a = (rng.random(n) < 0.7).astype(np.int8)
    right_b = right_a.copy()
    right_b[np.flatnonzero(right_a == 0)[:flips]] = 1
    a = Scored(right_a, common + 0.05 * rng.standard_normal((n, 5)), rng.uniform(1e-3, 3e-3, n))
    b = Scored(right_b, common + 0.05 * rng.standard_normal((n, 5)) + shift, a.mse * 0.5)
    return a, b, rng.standard_normal((512, 5)) * 3


def test_the_paired_difference_sees_a_gap_the_two_separate_intervals_do_not():
    a, b, real = _pair(shift=1.5, flips=12)
    d = paired_difference(a, b, real, resamples=300)
    assert d["fd_ddit"] == pytest.approx(frechet_distance(b.feats, real) - frechet_distance(a.feats, real))
    assert d["accuracy_ddit"] == pytest.approx(12 / 240)
    assert d["psnr_db"] == pytest.approx(psnr_of_mse(b.mse.mean()) - psnr_of_mse(a.mse.mean()))  # +3.01 dB
    for key in ("fd_ddit", "accuracy_ddit", "psnr_db"):
        assert d[f"{key}_ci"][0] <= d[key] <= d[f"{key}_ci"][1], key
    # B moved away from the real set: worse FD, and the paired interval says so; B is right more often: better
    assert d["better"] == {"fd_ddit": "a", "accuracy_ddit": "b", "psnr_db": "b"}
    # each accuracy alone: intervals ~12 points wide overlap a 5-point gap; the paired one lies above 0
    ci_a, ci_b = mean_ci(a.right, resamples=300), mean_ci(b.right, resamples=300)
    assert ci_b[0] < ci_a[1] and d["accuracy_ddit_ci"][0] > 0
    same = paired_difference(a, a, real, resamples=100)
    assert same["fd_ddit"] == 0 and same["better"] == {k: "neither" for k in same["better"]}
    with pytest.raises(ValueError, match="same samples"):
        paired_difference(a, Scored(b.right[:10], b.feats[:10], b.mse[:10]), real)


def _save(path, rows, base, real, seeds=range(100, 340)):
    save_scores(path, seeds=list(seeds), labels=np.arange(240) % 9, base=base, rows=rows, real=real)


def _tool(*argv) -> int:
    return run_tool("compare_quality_runs.py", *argv)


def test_scores_round_trip_and_the_tool_compares_two_runs(tmp_path, capsys):
    a, b, real = _pair(shift=0.0, flips=20)
    _save(tmp_path / "a.npz", {"rule@0.0001": a, "fixed 2x3,4x25": b}, a, real)
    _save(tmp_path / "b.npz", {"rule@0.0001": b}, a, real)
    loaded = load_scores(tmp_path / "a.npz")
    assert list(loaded["rows"]) == ["rule@0.0001", "fixed 2x3,4x25"] and loaded["seeds"] == list(range(100, 340))
    assert np.array_equal(loaded["rows"]["fixed 2x3,4x25"].feats, b.feats)
    out = tmp_path / "d.json"
    assert _tool(str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--json", str(out)) == 0
    printed = capsys.readouterr().out
    assert "240 samples paired by seed" in printed and "accuracy     +8.3" in printed and "B better" in printed
    report = json.loads(out.read_text())
    assert report["row_a"] == report["row_b"] == "rule@0.0001" and report["same_base"]
    assert report["accuracy_ddit"] == pytest.approx(20 / 240)
    # the same file, two of its rows: the fixed schedule against the rule
    assert _tool(str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), "--row-b", "fixed 2x3,4x25") == 0
    assert "fixed 2x3,4x25" in capsys.readouterr().out
    # bad input: one line, exit 2
    _save(tmp_path / "other.npz", {"rule": a}, a, real, seeds=range(0, 240))
    assert _tool(str(tmp_path / "a.npz"), str(tmp_path / "other.npz")) == 2
    assert "same seeds" in capsys.readouterr().err
    assert _tool(str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--row-b", "nope") == 2
    assert "no such row" in capsys.readouterr().err
    assert _tool(str(tmp_path / "a.npz"), str(tmp_path / "missing.npz")) == 2
    assert "--scores" in capsys.readouterr().err
