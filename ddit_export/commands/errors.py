"""One place that turns library errors into the CLI's one-line messages and exit codes."""

from __future__ import annotations

import errno
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class CommandExit(Exception):
    def __init__(self, code: int):
        self.code = code


class Terminated(KeyboardInterrupt):
    """Raised by cli.py's SIGTERM handler: unwinds (and cleans up) exactly like Ctrl-C."""


# File-system faults that are the environment's, not a bug: full or read-only disks, permissions,
# paths that are not what they should be. Reported in one line naming the file.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system or limit", errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied", errno.EPERM: "operation not permitted", errno.ENOENT: "no such file",
    errno.EISDIR: "is a folder", errno.ENOTDIR: "not a folder", errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long", errno.ENOTEMPTY: "folder not empty",
}


def describe_os_error(err: OSError) -> str | None:
    """One line for an environment fault (naming the file), or None for anything else."""
    if err.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = f" writing or reading {err.filename}" if err.filename else ""
    hint = " (free some space or choose another --out)" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) \
        else ""
    return f"{ENVIRONMENT_ERRNOS[err.errno]}{where}{hint}; nothing was left half-written"


def fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    stderr.print(f"[bold red]ddit-export: error:[/] {escape(message)}")  # messages hold [brackets] literally
    return code


@contextmanager
def cli_errors():
    """Bad input (ValueError and its kin, missing files, full or read-only disks) -> one line, exit 2;
    validation -> exit 1."""
    from ..export.validate import ValidationError

    try:
        yield
    except ValidationError as err:
        raise CommandExit(fail(str(err), EXIT_FAILED)) from None
    except ValueError as err:
        raise CommandExit(fail(str(err))) from None
    except OSError as err:
        line = str(err) if err.errno is None else describe_os_error(err)  # errno None: our own message
        if line is None:
            raise
        raise CommandExit(fail(line)) from None


def run_guarded(body) -> int:
    try:
        with cli_errors():
            return body() or 0
    except CommandExit as done:
        return done.code
    except KeyboardInterrupt as stop:
        what = "terminated" if isinstance(stop, Terminated) else "interrupted"
        stderr.print(f"{what}: temporary files removed (exports write nothing until they finish; "
                     "training keeps its last checkpoint)")
        return 143 if isinstance(stop, Terminated) else 130
