"""Write a folder or file completely or not at all, one writer at a time, with mkdir's permissions.

A folder is built in a temporary sibling (`.NAME.tmp-*`) and renamed into place. Every writer of a
target holds an exclusive lock on `.NAME.lock` beside it for the whole write, so two commands
aimed at the same output run one after the other, and the second sees what the first left. A
temporary sibling found while holding the lock belongs to a writer that died without cleaning up
(SIGKILL, power loss): it is removed. The lock file is removed with the lock; a killed writer's
lock file stays, unlocked, and the next writer takes it over.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from .stop import raise_if_stopped

_held: dict[Path, int] = {}  # lock files this process holds -> nesting depth (flock would self-block)


def umask() -> int:
    """The process umask (reading it means setting it; set it straight back)."""
    current = os.umask(0)
    os.umask(current)
    return current


def chmod_like_mkdir(path: Path, folder: bool) -> None:
    """tempfile creates 0700 folders and 0600 files; give them what mkdir/open would (0777/0666 & ~umask)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~umask())


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


def _remove_stale(target: Path) -> None:
    """Leftovers of a writer that was killed: only called while holding the target's lock."""
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for leftover in target.parent.glob(pattern):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


@contextmanager
def output_lock(target, on_wait: Callable[[str], None] | None = None):
    """Hold the exclusive lock of `target` (re-entrant within a process); waits for another holder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    key = _lock_path(target).resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = _acquire(key, target, on_wait)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _held[key] = 1
        try:
            _remove_stale(target)
            yield
        finally:
            del _held[key]
            key.unlink(missing_ok=True)  # still holding it: a waiter then finds its file gone and retries
    finally:
        os.close(fd)  # closing releases the lock


def _acquire(key: Path, target: Path, on_wait) -> int:
    """flock `key`, retrying when the holder removed the file meanwhile (so no lock file outlives a write)."""
    while True:
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            if on_wait:
                on_wait(f"waiting for another command writing {target} (pid {holder}) to finish")
                on_wait = None
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(key).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _temp_sibling(target: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    chmod_like_mkdir(tmp, folder=True)
    return tmp


def check_writable(target, flag: str = "--out") -> None:
    """Refuse an output folder the file system will not take, before any work is done for it."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{flag} {target} exists and is not a folder")
    _probe(target, flag)


def check_writable_file(path, flag: str) -> None:
    """Refuse an output file the file system will not take (its folder read-only, the path a folder), before
    any work is done for it. Its temporary file is made beside it, so its folder is what must take writes."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; name a file in it")
    _probe(path, flag)


def _probe(target: Path, flag: str) -> None:
    """Make and remove a folder where `target`'s temporary sibling will go (the nearest existing ancestor)."""
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {target} cannot be written: {parent} is not a folder")
    try:  # ask the file system itself: permission bits say nothing about /proc, read-only mounts, quotas
        os.rmdir(tempfile.mkdtemp(prefix=".ddit-probe-", dir=parent))
    except OSError as err:
        raise ValueError(f"{flag} {target} is not writable ({err.strerror} in {parent}); choose another {flag}") \
            from None


@contextmanager
def staged_files(out):
    """Yield a temporary folder; when the block succeeds its files move into `out` (created if
    needed), each in one rename. A failure leaves `out` as it was: no half-written outputs."""
    out = Path(out)
    with output_lock(out):
        tmp = _temp_sibling(out)
        try:
            try:
                yield tmp
            except OSError as err:
                if err.filename or err.errno is not None:
                    raise
                # numpy and PIL report a short write without errno or file ("4096 requested and 218 written")
                raise OSError(f"writing the outputs for {out} failed ({err}): is the disk full? "
                              "Nothing was written") from err
            raise_if_stopped()
            out.mkdir(parents=True, exist_ok=True)
            for item in tmp.iterdir():
                os.replace(item, out / item.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_folder(target, replace: bool = False):
    """Yield a temporary folder next to `target`; on success it becomes `target` in one rename.

    On any error (or KeyboardInterrupt / SIGTERM, see cli.py) the temporary folder is removed and
    `target` is left as it was. With `replace=True` an existing `target` is swapped out (moved
    aside, then deleted).
    """
    target = Path(target)
    with output_lock(target):
        tmp = _temp_sibling(target)
        try:
            yield tmp
            raise_if_stopped()  # an interrupt swallowed on the way must not publish the output
            if target.exists():
                if not replace:
                    raise FileExistsError(f"{target} already exists")
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                target.rename(old)
                tmp.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path):
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        chmod_like_mkdir(Path(tmp), folder=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` to ``path`` completely or not at all (temp file beside it, then os.replace)."""
    with atomic_file(path) as tmp, open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)
