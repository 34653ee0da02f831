"""`bench --peer` without optimum here: the isolated venv's refusal / reuse / build paths (pip faked, so
nothing is downloaded) and the worker protocol run for real against this interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ddit_export.bench import peer_venv
from ddit_export.bench.peer_venv import MARKER, PEER_PINS, PeerVenvError, ensure_venv

ROOT = Path(__file__).resolve().parents[2]


def _fake_venv(path: Path, pins=PEER_PINS, marker=True) -> Path:
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "python").write_text("")
    (path / "pyvenv.cfg").write_text("home = /nowhere\n")
    if marker:
        (path / MARKER).write_text(json.dumps({"pins": list(pins)}))
    return path


def _no_run(*args, **kwargs):
    raise AssertionError(f"nothing should run: {args}")


def test_pins_match_the_optimum_extra():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert list(peer_venv.OPTIMUM_EXTRA) == extras["optimum"]
    assert [d for d in deps if d.startswith("torch")][0] in PEER_PINS


def test_where_the_venv_lives(monkeypatch, tmp_path):
    monkeypatch.delenv(peer_venv.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert peer_venv.resolve_venv() == (tmp_path / "ddit-export" / f"peer-optimum-{peer_venv.pins_hash()}", False)
    assert peer_venv.pins_hash() != peer_venv.pins_hash(PEER_PINS[:-1])  # other pins, other folder
    monkeypatch.setenv(peer_venv.ENV_VAR, str(tmp_path / "env"))
    assert peer_venv.resolve_venv() == (tmp_path / "env", True)
    assert peer_venv.resolve_venv(tmp_path / "opt") == (tmp_path / "opt", True)


def test_reuse_complete_or_given_venv_without_running_anything(monkeypatch, tmp_path):
    monkeypatch.delenv(peer_venv.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = _fake_venv(peer_venv.default_venv())
    assert ensure_venv(run=_no_run, progress=_no_run) == cached
    given = _fake_venv(tmp_path / "mine", marker=False)  # e.g. made with pip install -e ".[optimum]"
    assert ensure_venv(given, run=_no_run, progress=_no_run) == given


@pytest.mark.parametrize("state", ["empty folder", "other pins"])
def test_refuses_an_incomplete_cache_folder(monkeypatch, tmp_path, state):
    monkeypatch.delenv(peer_venv.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    target = peer_venv.default_venv()
    target.mkdir(parents=True) if state == "empty folder" else _fake_venv(target, pins=["optimum-onnx==9"])
    if state == "other pins":
        (target / "pyvenv.cfg").unlink()
    with pytest.raises(PeerVenvError) as err:
        ensure_venv(run=_no_run, progress=_no_run)
    assert "\n" not in str(err.value) and f"rm -r {target}" in str(err.value)


def _fake_run(pip_rc: int):
    def run(cmd, stdout, **kwargs):
        if cmd[1:3] == ["-m", "venv"]:
            _fake_venv(Path(cmd[3]), marker=False)
            return subprocess.CompletedProcess(cmd, 0)
        stdout.write("Looking in links: /opt/wheels\nERROR: No matching distribution found for optimum-onnx==0.1.0\n"
                     if pip_rc else "Successfully installed optimum-onnx-0.1.0\n")
        return subprocess.CompletedProcess(cmd, pip_rc)
    return run


def test_pip_failure_is_one_line_with_the_fix_and_leaves_nothing(tmp_path):
    lines = []
    target = tmp_path / "cache" / "peer"
    with pytest.raises(PeerVenvError) as err:
        ensure_venv(target, run=_fake_run(1), progress=lines.append)
    msg = str(err.value)
    assert "\n" not in msg and "pip install" in msg and "No matching distribution" in msg and "--peer-venv" in msg
    assert len(lines) == 1 and "building the optimum peer venv" in lines[0]
    assert not target.exists() and [p.name for p in target.parent.iterdir()] == ["peer.pip.log"]


def test_build_is_atomic_then_reused(tmp_path):
    target = tmp_path / "peer"
    assert ensure_venv(target, run=_fake_run(0), progress=lambda line: None) == target
    assert peer_venv.is_complete(target) and sorted(p.name for p in tmp_path.iterdir()) == ["peer", "peer.pip.log"]
    assert ensure_venv(target, run=_no_run, progress=_no_run) == target


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="the worker test runs this interpreter as a venv's python")
def test_worker_protocol_on_this_interpreter(tiny_flux_engines, tmp_path):
    """The real worker, run as the venv path runs it (own process, PYTHONPATH = a link to this package).
    Without optimum here it must answer one JSON line saying so; with it, it exports the peer."""
    from ddit_export.bench.peer_optimum import unavailable_reason

    venv = Path(sys.prefix)
    if unavailable_reason():
        with pytest.raises(PeerVenvError, match="optimum-onnx is not usable") as err:
            peer_venv.run_worker(venv, tiny_flux_engines, tmp_path / "out", 18)
        assert "\n" not in str(err.value)
    else:
        reply = peer_venv.run_worker(venv, tiny_flux_engines, tmp_path / "out", 18)
        assert reply["ok"] and Path(reply["file"]).is_file() and reply["versions"]["optimum-onnx"] == "0.1.0"


def test_bench_peer_reports_a_refused_venv_as_skipped(tiny_flux_engines, tmp_path):
    from ddit_export.bench.peer_optimum import peer_latency
    from ddit_export.bench.report import peer_markdown

    (tmp_path / "not-a-venv").mkdir()
    result = peer_latency(tiny_flux_engines, venv=tmp_path / "not-a-venv", isolated=True, progress=_no_run)
    assert set(result) == {"skipped"} and "not a complete peer venv" in result["skipped"]
    assert peer_markdown(result)[0].startswith("Skipped: ")
