"""What a run tells the person watching it: the guide's log lines, and a bar on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol


def clock() -> str:
    """HH:MM:SS, local time, as in the guide's log lines."""
    return datetime.now().strftime("%H:%M:%S")


class Reporter(Protocol):
    """Receives progress from the runner; the CLI prints, a library caller may collect."""

    def message(self, text: str) -> None:
        """A line of its own (Found checkpoint, Loaded checkpoint, summaries)."""

    def start_method(self, method: str, total: int, done: int) -> None:
        """A method begins with `done` of `total` samples already processed."""

    def processed(self, count: int, total: int, cached: bool = False) -> None:
        """Sample number `count` of `total` is committed."""

    def checkpoint(self, name: str, count: int, total: int) -> None:
        """A checkpoint file was written."""

    def end_method(self) -> None:
        """The method's loop ended (finished or not)."""


class LineReporter:
    """The guide's plain lines, one per event; for pipes, logs and tests."""

    def __init__(self, echo: Callable[[str], Any] | None = None):
        # flushed per line: a log piped to a file must show every sample that was committed
        self.echo = echo or (lambda text: print(text, flush=True))

    def message(self, text: str) -> None:
        self.echo(text)

    def start_method(self, method: str, total: int, done: int) -> None:
        self.echo(f"Starting generation at {clock()}...")

    def processed(self, count: int, total: int, cached: bool = False) -> None:
        suffix = " (Cached)" if cached else ""
        self.echo(f"[{clock()}] Processed {count}/{total} samples{suffix}...")

    def checkpoint(self, name: str, count: int, total: int) -> None:
        self.echo(f"  → Checkpoint saved: {name} ({count}/{total} samples)")

    def end_method(self) -> None:
        pass


class SilentReporter(LineReporter):
    """Says nothing (the default for library calls)."""

    def __init__(self) -> None:
        super().__init__(lambda _text: None)


class TerminalReporter(LineReporter):
    """The same lines, plus a live progress bar with rate and ETA at the bottom."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(highlight=False, soft_wrap=True)
        super().__init__(lambda text: self.console.print(text, markup=False))
        self._progress: Any = None
        self._task: Any = None

    def start_method(self, method: str, total: int, done: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        super().start_method(method, total, done)
        self._progress = Progress(
            TextColumn(f"[bold]{method}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(method, total=total, completed=done, rate="")
        self._start = (datetime.now(), done)

    def processed(self, count: int, total: int, cached: bool = False) -> None:
        super().processed(count, total, cached)
        if self._progress is not None:
            started, first = self._start
            seconds = (datetime.now() - started).total_seconds()
            rate = f"{(count - first) / seconds:.2f} samples/s" if seconds > 0 else ""
            self._progress.update(self._task, completed=count, rate=rate)

    def end_method(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def reporter_for_stdout() -> Reporter:
    """A bar on a terminal, plain lines otherwise."""
    return TerminalReporter() if sys.stdout.isatty() else LineReporter()
