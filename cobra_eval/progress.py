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


def generation_lines(summary: Any) -> list[str]:
    """Per method: model calls made, cache hits, and how often parsing needed a fallback."""
    lines = []
    for m in summary.methods:
        requests = m.generated + m.cache_hits
        failed = m.parse_fallbacks + m.parse_empty
        rate = f"{failed / m.processed:.1%}" if m.processed else "-"
        lines.append(
            f"  {m.method}: {requests} generations this run ({m.generated} by the model, "
            f"{m.cache_hits} from cache); parse fallbacks {m.parse_fallbacks}, "
            f"empty {m.parse_empty} ({rate} of {m.processed})"
        )
    return ["Generations and parsing:", *lines] if lines else []


def metrics_table(summary: Any) -> list[str]:
    """Corpus metrics of every method as aligned lines, then what was unavailable and why.

    No table when nothing could be scored (no Java, say): the reasons alone.
    """
    asked = [m for m in summary.methods if m.corpus is not None]
    scored = [m for m in asked if m.corpus.n and m.corpus.scores]
    lines = []
    if scored:
        names = list(dict.fromkeys(k for m in scored for k in m.corpus.scores))
        width = max(len("method"), *(len(m.method) for m in scored))
        lines = ["Corpus metrics:", "  " + "method".ljust(width) + "      n" +
                 "".join(f"{n:>9}" for n in names)]  # fmt: skip
        for m in scored:
            values = "".join(
                f"{m.corpus.scores[n]:>9.3f}" if n in m.corpus.scores else f"{'-':>9}"
                for n in names
            )
            lines.append(f"  {m.method.ljust(width)} {m.corpus.n:>6}{values}")
    reasons = {name: why for m in asked for name, why in m.corpus.unavailable.items()}
    return lines + unavailable_lines(reasons)


def unavailable_lines(reasons: dict[str, str]) -> list[str]:
    """'BLEU unavailable: why' for each metric group that could not be scored."""
    return [f"{name.upper()} unavailable: {why}" for name, why in reasons.items()]
