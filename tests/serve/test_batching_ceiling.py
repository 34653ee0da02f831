"""`tools/batching_ceiling.py`: one-by-one vs lock-step on the same requests, results checked against solo runs."""

from __future__ import annotations

import json

import pytest
import torch

from ddit_export.runtime.backends import get_backend
from ddit_export.serve.batched_runner import BatchedRunner
from ddit_export.serve.batching_ceiling import main, measure
from tests.serve.helpers import VARIANT_BATCH, demo_engine_folders


@pytest.fixture(scope="module")
def runner():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    solo_dir, batch_dir = demo_engine_folders()
    backends = [get_backend("onnx", solo_dir), get_backend("onnx", batch_dir)]
    yield BatchedRunner(backends)
    for b in backends:
        b.close()
    torch.set_num_threads(before)


def test_identical_requests_fill_every_call_and_distinct_ones_keep_their_own_schedules(runner):
    report = measure(runner, VARIANT_BATCH, steps=8, rounds=1)
    same, distinct = report["identical"], report["distinct"]
    assert same["requests_per_engine_call"] == VARIANT_BATCH  # one schedule: every call holds all requests
    assert len(same["schedules"]) == 1
    assert same["equal_to_solo"] and distinct["equal_to_solo"]
    assert 1 <= distinct["requests_per_engine_call"] <= VARIANT_BATCH
    for r in (same, distinct):
        assert r["requests"] == VARIANT_BATCH and len(r["ratios"]) == 1
        assert r["solo_ms_per_request"] > 0 and r["lock_step_ms_per_request"] > 0


def test_command_reuses_the_variant_and_writes_its_report(tmp_path, capsys):
    solo_dir, batch_dir = demo_engine_folders()
    engines = sorted(batch_dir.rglob("*.onnx"))
    before = [f.stat().st_mtime_ns for f in engines]
    out = tmp_path / "ceiling.json"
    assert main([str(solo_dir), "--batch", str(VARIANT_BATCH), "--steps", "5", "--rounds", "1",
                 "--json", str(out)]) == 0
    assert engines and [f.stat().st_mtime_ns for f in engines] == before  # reused, not rebuilt
    report = json.loads(out.read_text())
    assert report["batch"] == VARIANT_BATCH and set(report["call_ms"]) >= {f"b{VARIANT_BATCH}p2", "b1p2"}
    assert "identical: one by one" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--batch", "1"], "--batch must be at least 2"),
    (["--rounds", "0"], "--rounds must be at least 1"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_folder_without_engines_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), "--batch", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("batching_ceiling: error:") and "\n" not in err
