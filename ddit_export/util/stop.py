"""Ctrl-C and SIGTERM as exceptions that cannot be lost.

A signal handler raises where the main thread happens to be; when that is inside a `__del__` or
another place whose exceptions Python ignores, the interrupt vanishes and the command would go on
to publish its output. So the handlers also record the signal, and every commit point (the rename
that publishes an output) calls `raise_if_stopped` first.
"""

from __future__ import annotations

import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM: unwinds (and cleans up) exactly like Ctrl-C."""


_received: list[int] = []


def _handler(signum, frame):
    _received.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def install() -> None:
    """Route SIGINT and SIGTERM through `_handler` (main thread only, where Python runs handlers)."""
    _received.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)


def raise_if_stopped() -> None:
    """Raise again a stop request whose first exception was swallowed."""
    if _received:
        raise Terminated() if _received[-1] == signal.SIGTERM else KeyboardInterrupt()
