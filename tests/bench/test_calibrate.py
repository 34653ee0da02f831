"""`ddit-export calibrate`: the pick on a synthetic Pareto table, the atomic manifest rewrite, a
tiny end-to-end sweep that stores tau, and bad input."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from ddit_export.bench import calibrate
from ddit_export.commands import calibrate_cmd
from ddit_export.commands.argtypes import OneLineParser


def cal(argv: list[str]) -> int:
    parser = OneLineParser(prog="ddit-export calibrate")  # the CLI's parser: its refusals are one line too
    calibrate_cmd.add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as refused:  # a value argparse refuses (e.g. an unknown --backend)
        return refused.code
    return calibrate_cmd.run(args)


def point(tau, rho, speed, psnr):
    return {"tau": tau, "rho": rho, "token_speedup": speed, "psnr": psnr}


SYNTHETIC = [  # speed-up rises and quality falls with tau, as in a real sweep
    point(1e-4, 0.4, 1.00, float("inf")),
    point(1e-3, 0.4, 1.30, 42.0),
    point(1e-2, 0.4, 1.80, 33.0),
    point(1e-2, 0.2, 1.60, 31.0),  # dominated by (1e-2, 0.4)
    point(1e-1, 0.4, 2.40, 29.5),
    point(1.0, 0.4, 2.90, 21.0),
]


def test_pick_is_the_fastest_point_inside_the_budget():
    assert calibrate.pick_point(SYNTHETIC, "psnr", 30.0, "token_speedup")["tau"] == 1e-2
    assert calibrate.pick_point(SYNTHETIC, "psnr", 29.0, "token_speedup")["tau"] == 1e-1
    assert calibrate.pick_point(SYNTHETIC, "psnr", 20.0, "token_speedup")["tau"] == 1.0
    assert calibrate.pick_point(SYNTHETIC, "psnr", 1e9, "token_speedup")["tau"] == 1e-4  # inf: identical
    assert calibrate.pick_point(SYNTHETIC[1:], "psnr", 50.0, "token_speedup") is None
    # equal speed-ups: the better quality wins, then the smaller tau
    tie = [point(0.5, 0.4, 2.0, 30.0), point(0.2, 0.4, 2.0, 35.0), point(0.1, 0.4, 2.0, 35.0)]
    assert calibrate.pick_point(tie, "psnr", 25.0, "token_speedup")["tau"] == 0.1


def test_pareto_front_and_log_grid():
    marked = calibrate.mark_pareto([dict(p) for p in SYNTHETIC], "token_speedup", "psnr")
    assert [p["pareto"] for p in marked] == [True, True, True, False, True, True]
    grid = calibrate.log_grid(1e-4, 1.0, 5)
    assert grid == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    with pytest.raises(ValueError):
        calibrate.log_grid(0.0, 1.0, 3)


def test_store_calibration_rewrites_the_manifest_atomically(tiny_flux_engines, tmp_path, monkeypatch):
    folder = tmp_path / "engines"
    shutil.copytree(tiny_flux_engines, folder)
    before = (folder / "manifest.json").read_text()
    manifest = json.loads(before)

    def broken_replace(src, dst):
        assert os.path.dirname(os.path.abspath(src)) == str(folder)  # the temp file lies beside the manifest
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        calibrate.store_calibration(folder, manifest, 0.05, 0.3, {"chosen": {"tau": 0.05}})
    assert (folder / "manifest.json").read_text() == before  # untouched
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in tiny_flux_engines.iterdir())
    monkeypatch.undo()

    calibrate.store_calibration(folder, manifest, 0.05, 0.3, {"chosen": {"tau": 0.05, "psnr": float("inf")}})
    after = json.loads((folder / "manifest.json").read_text())
    assert after["scheduler"]["tau"] == 0.05 and after["scheduler"]["rho"] == 0.3
    assert after["scheduler"]["calibration"]["chosen"]["psnr"] == "inf"
    unchanged = {k: v for k, v in manifest.items() if k != "scheduler"}
    assert {k: v for k, v in after.items() if k != "scheduler"} == unchanged
    stale = dict(manifest, created="1999-01-01T00:00:00+00:00")
    with pytest.raises(ValueError, match="changed while calibrating"):
        calibrate.store_calibration(folder, stale, 0.1, 0.4, {})


@pytest.fixture
def engines_copy(tiny_flux_engines, tmp_path):
    folder = tmp_path / "engines"
    shutil.copytree(tiny_flux_engines, folder)
    return folder


def test_calibrate_end_to_end_stores_tau(engines_copy, tmp_path, torch_single_thread):
    pytest.importorskip("ddit_export.bench.quality", reason="the quality harness (bench/quality.py) is not there yet")
    out = tmp_path / "cal"
    code = cal([str(engines_copy), "--steps", "6", "--seeds", "0", "--taus", "0.001,10", "--rhos", "0.4",
                "--budget", "0", "--out", str(out)])
    assert code == 0
    for name in ("calibration.json", "calibration.md", "calibration.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "calibration.json").read_text())
    points = report["points"]
    assert len(points) == 2 and {"tau", "rho", "token_speedup", "flop_speedup", "wall_speedup", "psnr", "ssim",
                                 "pareto"} <= points[0].keys()
    best = max(points, key=lambda p: p["token_speedup"])
    assert best["tau"] == 10 and best["token_speedup"] > 1  # a huge tau picks coarse sizes after warm-up
    scheduler = json.loads((engines_copy / "manifest.json").read_text())["scheduler"]
    assert scheduler["tau"] == report["chosen"]["tau"] == 10 and scheduler["rho"] == 0.4
    stored = scheduler["calibration"]
    assert stored["grid"] == {"tau": [0.001, 10.0], "rho": [0.4]} and stored["budget"]["min"] == 0
    assert {"date", "chosen", "points", "samples", "steps", "backend"} <= stored.keys()


def test_calibrate_without_a_point_in_budget_changes_nothing(engines_copy, tmp_path, torch_single_thread):
    pytest.importorskip("ddit_export.bench.quality", reason="the quality harness (bench/quality.py) is not there yet")
    before = (engines_copy / "manifest.json").read_text()
    code = cal([str(engines_copy), "--steps", "5", "--seeds", "0", "--taus", "10", "--rhos", "0.4",
                "--metric", "ssim", "--budget", "2", "--out", str(tmp_path / "cal")])
    assert code == 1
    assert (engines_copy / "manifest.json").read_text() == before


@pytest.mark.parametrize("extra,needle", [
    (["--rhos", "1.5"], "--rhos"),
    (["--taus", "x"], "--taus"),
    (["--tau-min", "0"], "tau grid"),
    (["--metric", "image_psnr"], "no VAE"),
    (["--backend", "nope"], "unknown backend"),
])
def test_calibrate_bad_input_exits_2(tiny_flux_engines, tmp_path, capsys, extra, needle):
    before = (tiny_flux_engines / "manifest.json").read_text()
    assert cal([str(tiny_flux_engines), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert (tiny_flux_engines / "manifest.json").read_text() == before and not (tmp_path / "o").exists()


def test_calibrate_missing_folder_exits_2(tmp_path, capsys):
    assert cal([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_image_metrics_through_the_demo_codec():
    pytest.importorskip("ddit_export.bench.quality", reason="the quality harness (bench/quality.py) is not there yet")
    import torch

    assert calibrate.image_decoder({"model": {"id": "tiny"}, "family": "flux"}, "cpu") is None  # no VAE
    decode = calibrate.image_decoder({"model": {"id": "demo"}, "family": "flux"}, "cpu")
    latent = torch.linspace(-1, 1, 32).expand(1, 3, 32, 32)
    images = decode(latent)
    assert images.shape == (1, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    same = calibrate.image_quality(images, images)
    assert same["image_psnr"] == float("inf") and same["image_ssim"] == pytest.approx(1.0)
    assert calibrate.image_quality(images * 0.9, images)["image_psnr"] < 40


def test_plot_labels_every_point_and_shows_the_infinite_psnr_one():
    import math

    from ddit_export.bench.plots import calibration_figure

    points = [{"tau": 1e-4, "rho": 0.4, "psnr": math.inf, "token_speedup": 1.0, "pareto": True},
              {"tau": 1e-3, "rho": 0.4, "psnr": 31.0, "token_speedup": 1.4, "pareto": True},
              {"tau": 1e-2, "rho": 0.4, "psnr": 24.0, "token_speedup": 2.1, "pareto": True}]
    fig = calibration_figure(points, points[1], "psnr", 30.0, "token_speedup")
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert {"0.0001", "0.001", "0.01"} <= set(texts) and "inf" in texts
    drawn = [xy for c in ax.collections for xy in c.get_offsets().tolist()]
    assert any(x == 1.0 and y > 31.0 and math.isfinite(y) for x, y in drawn)  # the inf point, above the others


def test_inspect_formats_a_calibrated_manifest(engines_copy, tmp_path, capsys, torch_single_thread):
    from ddit_export.cli import main

    assert cal([str(engines_copy), "--steps", "6", "--seeds", "0", "--taus", "10", "--rhos", "0.4", "--budget", "0",
                "--out", str(tmp_path / "cal")]) == 0
    capsys.readouterr()
    assert main(["inspect", str(engines_copy)]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines at the console width
    assert "chose tau 10 rho 0.4 (token_speedup" in printed and "1 samples x 6 steps" in printed
    assert "{" not in printed and "'" not in printed  # no raw Python dicts or reprs
