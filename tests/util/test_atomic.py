"""util/atomic.py on its own: whole-or-nothing folders and files, the per-target lock, the writability probes.
(The same guarantees through whole commands, with real signals and full disks: tests/cli/test_output_safety.py.)"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddit_export.util.atomic import (
    atomic_file,
    atomic_folder,
    check_writable,
    check_writable_file,
    output_lock,
    staged_files,
    write_text_atomic,
)

REPO = Path(__file__).resolve().parent.parent.parent


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "a").write_text("1")
            raise RuntimeError("failed half-way")
    assert names(tmp_path) == []  # no target, no temporary folder, no lock file
    with atomic_folder(target) as tmp:
        (tmp / "a").write_text("1")
        assert not target.exists()  # nothing visible before the block succeeds
    assert names(tmp_path) == ["out"] and (target / "a").read_text() == "1"


def test_atomic_folder_replaces_only_when_asked(tmp_path):
    target = tmp_path / "out"
    with atomic_folder(target) as tmp:
        (tmp / "old").write_text("old")
    with pytest.raises(FileExistsError):
        with atomic_folder(target) as tmp:
            (tmp / "new").write_text("new")
    assert names(target) == ["old"]
    with atomic_folder(target, replace=True) as tmp:
        (tmp / "new").write_text("new")
    assert names(target) == ["new"] and names(tmp_path) == ["out"]


def test_staged_files_add_to_a_folder_and_a_failure_changes_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OSError):
        with staged_files(out) as staging:
            (staging / "trace.json").write_text("{}")
            raise OSError(28, "No space left on device", "latent.npy")
    assert names(out) == ["keep.txt"] and names(tmp_path) == ["out"]
    with staged_files(out) as staging:
        (staging / "trace.json").write_text("{}")
        (staging / "keep.txt").write_text("new")
    assert names(out) == ["keep.txt", "trace.json"] and (out / "keep.txt").read_text() == "new"


def test_a_short_write_without_errno_is_reported_naming_the_output(tmp_path):
    with pytest.raises(OSError, match=f"writing the outputs for {tmp_path / 'out'} failed.*disk full"):
        with staged_files(tmp_path / "out"):
            raise OSError("4096 requested and 218 written")  # numpy / PIL's words
    assert names(tmp_path) == []


def test_atomic_file_keeps_the_old_file_on_failure_and_gets_the_umask_mode(tmp_path):
    path = tmp_path / "report.json"
    write_text_atomic(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert path.read_text() == "old" and names(tmp_path) == ["report.json"]
    previous = os.umask(0o027)
    try:
        write_text_atomic(path, "new")
    finally:
        os.umask(previous)
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o640


def test_the_lock_is_reentrant_and_removed_after_use(tmp_path):
    target = tmp_path / "out"
    with output_lock(target):
        with output_lock(target):  # a writer that calls another writer of the same target
            assert (tmp_path / ".out.lock").read_text() == str(os.getpid())
        assert (tmp_path / ".out.lock").exists()
    assert names(tmp_path) == []


def test_a_second_process_waits_for_the_lock_holder(tmp_path):
    target = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ddit_export.util.atomic import output_lock\n"
         f"with output_lock({str(target)!r}):\n    print('held', flush=True)\n    time.sleep(2)\n"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        waits: list[str] = []
        started = time.monotonic()
        with output_lock(target, on_wait=waits.append):
            waited = time.monotonic() - started
    finally:
        holder.wait(30)
    assert waits and f"pid {holder.pid}" in waits[0]
    assert waited > 0.5 and holder.returncode == 0


def test_a_killed_writers_leftovers_are_removed_by_the_next_writer(tmp_path):
    (tmp_path / ".out.tmp-abc").mkdir()
    (tmp_path / ".out.tmp-abc" / "half.onnx").write_text("x")
    (tmp_path / ".out.old-123").mkdir()
    (tmp_path / ".out.lock").write_text("99999")  # unlocked: its process is gone
    (tmp_path / ".other.tmp-abc").mkdir()  # another target's: not ours to remove
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "a").write_text("1")
    assert names(tmp_path) == [".other.tmp-abc", "out"]


def test_writability_probes(tmp_path):
    (tmp_path / "file").write_text("x")
    check_writable(tmp_path / "new" / "deeper")  # created later, under a writable folder
    check_writable_file(tmp_path / "new" / "report.json", "--json")
    check_writable_file(tmp_path / "file", "--json")  # an existing file is replaced
    with pytest.raises(ValueError, match="--out .*file exists and is not a folder"):
        check_writable(tmp_path / "file")
    with pytest.raises(ValueError, match="--json .* is a folder; name a file in it"):
        check_writable_file(tmp_path, "--json")
    with pytest.raises(ValueError, match=r"--json .*file/r.json cannot be written: .*file is not a folder"):
        check_writable_file(tmp_path / "file" / "r.json", "--json")
    for probe in (lambda: check_writable("/proc/ddit-out"), lambda: check_writable_file("/proc/r.json", "--json")):
        with pytest.raises(ValueError, match="is not writable"):  # /proc refuses new entries, even to root
            probe()
