"""Progress display for batches: a live bar with per-study status lines, or plain lines.

The coordinator calls ``start(total, already_done)``, ``started(key)``,
``finished(key, status, reason, seconds)`` and ``close()``. :func:`make_reporter` picks the
live ``rich`` bar on a terminal and one plain line per event otherwise (logs, CI, pipes).
"""
from __future__ import annotations

import sys
import threading
from typing import TextIO

from . import phi

_STYLE = {"done": "green", "failed": "red", "skipped": "yellow"}


class NullReporter:
    def start(self, total: int, already_done: int = 0) -> None: ...
    def add_total(self, n: int) -> None: ...
    def started(self, key: str) -> None: ...
    def finished(self, key: str, status: str, reason: str, seconds: float) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


class PlainReporter(NullReporter):
    """One line per study event: ``[ 3/10] done     case01  4.1 s``."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.total = self.count = 0
        self._lock = threading.Lock()

    def _print(self, s: str) -> None:
        with self._lock:
            print(phi.redact(s), file=self.stream, flush=True)

    def start(self, total: int, already_done: int = 0) -> None:
        self.total, self.count = total, already_done
        if already_done:
            self._print(f"{already_done} of {total} studies already done (resume): skipping them")

    def add_total(self, n: int) -> None:
        self.total += n

    def finished(self, key: str, status: str, reason: str, seconds: float) -> None:
        self.count += 1
        w = len(str(self.total))
        line = f"[{self.count:>{w}}/{self.total}] {status:<8} {key}  {seconds:.1f} s"
        if reason and status != "done":
            line += f"  {reason}"
        self._print(line)

    def message(self, text: str) -> None:
        self._print(text)


class RichReporter(NullReporter):
    """Live progress bar (done/failed/skipped counts, elapsed, ETA) plus a line per study."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]batch[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("[green]{task.fields[done]} done[/] [red]{task.fields[failed]} failed[/] "
                       "[yellow]{task.fields[skipped]} skipped[/] {task.fields[running]} running"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console)
        self.counts = {"done": 0, "failed": 0, "skipped": 0}
        self.running = 0
        self.task = None

    def start(self, total: int, already_done: int = 0) -> None:
        self.progress.start()
        self.task = self.progress.add_task("batch", total=total, completed=already_done, running=0, **self.counts)
        if already_done:
            self.message(f"{already_done} of {total} studies already done (resume): skipping them")

    def add_total(self, n: int) -> None:
        self.progress.update(self.task, total=self.progress.tasks[0].total + n)

    def started(self, key: str) -> None:
        self.running += 1
        self.progress.update(self.task, running=self.running)

    def finished(self, key: str, status: str, reason: str, seconds: float) -> None:
        from rich.markup import escape

        self.running = max(0, self.running - 1)
        self.counts[status] = self.counts.get(status, 0) + 1
        style = _STYLE.get(status, "white")
        line = f"[{style}]{status:<8}[/] {escape(phi.redact(key))}  {seconds:.1f} s"
        if reason and status != "done":
            line += f"  [dim]{escape(phi.redact(reason))}[/]"
        self.progress.console.print(line)
        self.progress.update(self.task, advance=1, running=self.running, **self.counts)

    def message(self, text: str) -> None:
        from rich.markup import escape

        self.progress.console.print(escape(phi.redact(text)))

    def close(self) -> None:
        self.progress.stop()


def make_reporter(kind: str = "auto"):
    """``auto``: rich bar on a terminal, plain lines otherwise; ``plain``; ``none``."""
    if kind == "none":
        return NullReporter()
    if kind == "rich" or (kind == "auto" and sys.stderr.isatty()):
        try:
            return RichReporter()
        except ImportError:
            pass
    return PlainReporter()
