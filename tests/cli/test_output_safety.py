"""Outputs are whole or absent, one writer at a time, with mkdir's permissions, whatever happens.

Faults are real: processes are killed with real signals, disks "fill up" through RLIMIT_FSIZE
(a write past the limit fails with EFBIG, as a full disk fails with ENOSPC), and read-only
locations are /proc (root ignores permission bits).
"""

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ddit_export
from ddit_export.export.build import export_engines
from ddit_export.export.request import ExportRequest

REPO = Path(ddit_export.__file__).resolve().parent.parent
SMALL = ["flux", "--model", "tiny", "--height", "64", "--width", "64", "--text-len", "8", "--patch-sizes", "2,4"]


def start(argv, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "ddit_export.cli", *map(str, argv)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def wait_for_temp_folder(out: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until the export has started writing (its hidden temporary folder beside --out exists)."""
    deadline = time.monotonic() + timeout
    while not list(out.parent.glob(f".{out.name}.tmp-*")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the export never started writing"
        time.sleep(0.05)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def limited_file_size(limit: int):
    def apply():  # in the child: a write past `limit` bytes fails with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_killed_exports_temp_folder_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "engines"
    victim = start([*SMALL, "--out", out])
    wait_for_temp_folder(out, victim)
    victim.kill()  # SIGKILL: no cleanup can run
    victim.communicate()
    assert [n for n in leftovers(tmp_path) if ".tmp-" in n], "SIGKILL should leave the temporary folder"
    export_engines(ExportRequest(model="tiny", patch_sizes=(2,), height=64, width=64, text_len=8, out=str(out)))
    assert leftovers(tmp_path) == [] and (out / "manifest.json").is_file()


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_clean_up_like_a_failure(tmp_path, signum, code):
    out = tmp_path / "engines"
    process = start([*SMALL, "--out", out])
    wait_for_temp_folder(out, process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    # (an interrupt that lands in a __del__ is printed by Python as "Exception ignored", then re-raised
    # by util/stop.py at the commit point: the command still ends with its one line)
    assert err.strip().splitlines()[-1].startswith(("interrupted:", "terminated:")), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temp folder, no lock file, no --out


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_outside_the_command_still_exits_130_or_143(signum, code):
    """The signal lands while `main` imports torch, before the command's own handler: Python used to end the
    process by re-sending itself SIGINT (exit -2, the intermittent code seen under load)."""
    probe = ("import os, time\nfrom ddit_export import cli\n"
             f"cli.quiet_third_party = lambda: (os.kill(os.getpid(), {int(signum)}), time.sleep(30))\n"
             "cli.entry_point()\n")
    result = subprocess.run([sys.executable, "-c", probe, "inspect", "/nonexistent"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == code, result.stderr
    assert result.stderr.strip() == ("interrupted" if code == 130 else "terminated"), result.stderr


def test_concurrent_writers_to_one_out_are_serialised(tmp_path):
    out = tmp_path / "engines"
    first = start([*SMALL, "--out", out])
    wait_for_temp_folder(out, first)
    second = start([*SMALL[:-4], "--text-len", "16", "--patch-sizes", "2,4", "--out", out])  # other inputs
    _, first_err = first.communicate(timeout=300)
    _, second_err = second.communicate(timeout=300)
    assert first.returncode == 0, first_err
    # the second waited for the first, then saw its engines and refused to replace them without --force
    assert second.returncode == 2, second_err
    assert "built from other inputs (text_len differ)" in second_err
    assert json.loads((out / "manifest.json").read_text())["request"]["text_len"] == 8
    assert leftovers(tmp_path) == []


def test_disk_full_during_an_export_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "engines"
    process = start([*SMALL, "--out", out], preexec_fn=limited_file_size(200_000))  # a graph is ~1 MB
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("ddit-export: error: file too large") and ".onnx" in line, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_generate_on_a_full_disk_leaves_no_partial_output(tiny_flux_engines, tmp_path):
    out = tmp_path / "gen"
    process = start(["generate", tiny_flux_engines, "--steps", "4", "--out", out],
                    preexec_fn=limited_file_size(1_000))  # trace.json fits, the latent does not
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and str(out) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_generate_whose_trajectory_cannot_be_written_leaves_no_outputs(tiny_flux_engines, tmp_path):
    """--save-trajectory is part of the outputs: written before --out is committed, so a trajectory that does not
    fit (here 7 latents, 115 kB, against a 30 kB file limit that trace.json and latent.npy pass) leaves neither."""
    out, trajectory = tmp_path / "gen", tmp_path / "traj.npz"
    process = start(["generate", tiny_flux_engines, "--steps", "6", "--out", out, "--save-trajectory", trajectory],
                    preexec_fn=limited_file_size(30_000))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "traj.npz" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("where, words", [("/proc/traj.npz", "not writable"), ("FOLDER", "is a folder")])
def test_generate_refuses_a_trajectory_it_cannot_write_before_any_work(cli, tiny_flux_engines, tmp_path, where,
                                                                       words):
    trajectory = tmp_path if where == "FOLDER" else where  # /proc refuses new files even to root
    started = time.perf_counter()
    cli.refuses("generate", tiny_flux_engines, "--out", tmp_path / "gen", "--save-trajectory", trajectory,
                naming=("--save-trajectory", str(trajectory), words))
    assert time.perf_counter() - started < 5  # before loading engines or sampling
    assert not (tmp_path / "gen").exists()


@pytest.mark.parametrize("command", ["generate", "bench", "calibrate"])
def test_read_only_output_is_refused_before_any_work(cli, tiny_flux_engines, command):
    started = time.perf_counter()
    cli.refuses(command, tiny_flux_engines, "--out", "/proc/ddit-export-out", naming=("--out", "not writable"))
    assert time.perf_counter() - started < 5  # refused before loading engines or sampling


def test_outputs_get_the_umask_permissions_mkdir_would(cli, tiny_flux_engines, tmp_path):
    previous = os.umask(0o027)
    try:
        export_engines(ExportRequest(model="tiny", patch_sizes=(2,), height=64, width=64, text_len=8,
                                     out=str(tmp_path / "engines")))
        code, err = cli("generate", tiny_flux_engines, "--steps", "4", "--out", tmp_path / "gen")
        assert code == 0, err
    finally:
        os.umask(previous)
    for path in [tmp_path / "engines", *(tmp_path / "engines").rglob("*"), tmp_path / "gen",
                 *(tmp_path / "gen").iterdir()]:
        expected = 0o750 if path.is_dir() else 0o640
        assert path.stat().st_mode & 0o777 == expected, f"{path}: {oct(path.stat().st_mode & 0o777)}"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowing is the point
def test_an_interrupt_swallowed_by_python_still_stops_the_commit(tmp_path):
    from ddit_export.util import stop
    from ddit_export.util.atomic import atomic_folder

    class RaisesInDel:
        def __del__(self):  # the handler's KeyboardInterrupt is raised here, where Python ignores it
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # give the handler bytecodes to run on
                pass

    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        stop.install()
        with pytest.raises(KeyboardInterrupt), atomic_folder(tmp_path / "out") as tmp:
            (tmp / "half.txt").write_text("written before the interrupt")
            RaisesInDel()  # created and collected at once: the interrupt is swallowed
        assert sorted(p.name for p in tmp_path.iterdir()) == []
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])
        stop._received.clear()
