"""One place that turns library errors into the CLI's one-line messages and exit codes."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class CommandExit(Exception):
    def __init__(self, code: int):
        self.code = code


def fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    stderr.print(f"[bold red]ddit-export: error:[/] {escape(message)}")  # messages hold [brackets] literally
    return code


@contextmanager
def cli_errors():
    """Bad input (ValueError and its kin, missing files) -> one line, exit 2; validation -> exit 1."""
    from ..export.validate import ValidationError

    try:
        yield
    except ValidationError as err:
        raise CommandExit(fail(str(err), EXIT_FAILED)) from None
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError) as err:
        raise CommandExit(fail(str(err))) from None


def run_guarded(body) -> int:
    try:
        with cli_errors():
            return body() or 0
    except CommandExit as done:
        return done.code
    except KeyboardInterrupt:
        stderr.print("interrupted (exports write nothing until they finish; training keeps its last checkpoint)")
        return 130



