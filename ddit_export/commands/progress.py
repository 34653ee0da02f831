"""Progress of long work: a counted bar with rate and ETA on a terminal, plain status lines elsewhere.

Logs and pipes get one line per tenth of the work (and the last), so a CI log shows that a run is
alive and how far it is without the terminal control codes a live bar would write.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second (rich's own speed column shows only for tasks without a total)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text("" if not task.speed else f"{task.speed:.2f} {self.unit}/s")


class Counted:
    """`with Counted(console, total, "sampling", unit="step") as bar: bar.advance(status="p4")`."""

    def __init__(self, console: Console, total: int, description: str, unit: str = "it"):
        self.console, self.total, self.description, self.unit = console, max(int(total), 1), description, unit
        self.done, self.started, self.next_line = 0, time.perf_counter(), 1
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            RateColumn(unit), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
        ) if self.live else None

    def __enter__(self) -> Counted:
        if self.progress:
            self.progress.start()
            self.task = self.progress.add_task(self.description, total=self.total, status="")
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()

    def advance(self, count: int = 1, status: str = "") -> None:
        self.update(self.done + count, status=status)

    def update(self, done: int, total: int | None = None, status: str = "") -> None:
        """Set the count (and the total, for work whose size the library knows): `progress(done, total)`."""
        self.done = done
        self.total = max(int(total), 1) if total else self.total
        if self.progress:
            self.progress.update(self.task, completed=done, total=self.total, status=status)
            return
        if self.done * 10 >= self.next_line * self.total or self.done >= self.total:
            self.next_line = self.done * 10 // self.total + 1
            elapsed = time.perf_counter() - self.started
            rate = self.done / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / rate if rate else 0.0
            extra = f", {status}" if status else ""
            self.console.print(f"{self.description}: {self.done}/{self.total} {self.unit}s "
                               f"({100 * self.done // self.total}%){extra}, {rate:.2f} {self.unit}/s, "
                               f"ETA {eta:.0f} s", highlight=False)
