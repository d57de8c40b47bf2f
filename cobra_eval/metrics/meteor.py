"""METEOR 1.5 through pycocoevalcap's jar, driven the way pycocoevalcap drives it.

pycocoevalcap's ``Meteor`` class scores a set in one call and has no way back
from a failure (its lock stays held and the process hangs at exit). A run needs
two separate steps instead: the statistics line of each sample as it lands,
and an ``EVAL`` over any set of those lines at every checkpoint. The protocol
lines here are byte-for-byte those of ``pycocoevalcap/meteor/meteor.py``, so
the scores are the same; every read has a deadline after which the JVM is
killed, and closing always kills it.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence
from typing import IO

from cobra_eval.metrics.corpus import pycocoevalcap_dir

#: Seconds one reply of the METEOR JVM may take (its start-up included) before it is killed.
METEOR_TIMEOUT_S = 120
#: Statistics requests written before their replies are read (each reply is ~100 bytes).
STATS_CHUNK = 64


class MeteorError(RuntimeError):
    """The METEOR process died, timed out or answered nonsense."""


class MeteorProcess:
    """One METEOR JVM (started on first use), scoring statistics lines and sets of them."""

    def __init__(self, timeout_s: float = METEOR_TIMEOUT_S):
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def stats(self, hypothesis: str, references: Sequence[str]) -> str:
        """The statistics line of one tokenized caption against its tokenized references."""
        with self._lock:
            return self._ask(_score_line(hypothesis, references), 1)[0]

    def warm_up(self) -> None:
        """Start the JVM now (it loads for seconds) so it is ready when the first sample lands."""
        with self._lock:
            self._start()

    def stats_many(self, pairs: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
        """The statistics lines of many (hypothesis, references), pipelined in chunks."""
        lines = [_score_line(hypothesis, references) for hypothesis, references in pairs]
        out: list[str] = []
        with self._lock:
            # chunks keep the replies in flight well below a pipe's buffer (no deadlock)
            for start in range(0, len(lines), STATS_CHUNK):
                chunk = lines[start : start + STATS_CHUNK]
                out += self._ask("\n".join(chunk), len(chunk))
        return out

    def evaluate(self, stats: Sequence[str]) -> tuple[float, list[float]]:
        """(corpus METEOR, per-sample METEOR) of a set of statistics lines: one ``EVAL``."""
        if not stats:
            raise ValueError("METEOR needs at least one statistics line")
        line = "EVAL" + "".join(f" ||| {s}" for s in stats)
        with self._lock:
            replies = self._ask(line, len(stats) + 1)
        try:
            values = [float(r) for r in replies]
        except ValueError:
            self._kill()
            raise MeteorError(f"METEOR answered {replies[-1]!r} instead of a score") from None
        return values[-1], values[:-1]

    def _ask(self, line: str, n_replies: int) -> list[str]:
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        # a reply that never comes (a wedged JVM) must not hang the run: kill it at the deadline
        timer = threading.Timer(self.timeout_s, proc.kill)
        timer.start()
        try:
            proc.stdin.write(f"{line}\n".encode())
            proc.stdin.flush()
            replies = [_read_line(proc.stdout) for _ in range(n_replies)]
        except (OSError, EOFError) as exc:
            self._kill()
            raise MeteorError(f"the METEOR process stopped: {_why(proc, exc)}") from None
        finally:
            timer.cancel()
        return replies

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            folder = pycocoevalcap_dir() / "meteor"
            self._proc = subprocess.Popen(
                ["java", "-jar", "-Xmx2G", "meteor-1.5.jar", "-", "-", "-stdio", "-l", "en",
                 "-norm"],
                cwd=folder, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        return self._proc

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        """Stop the JVM, if one was started."""
        with self._lock:
            self._kill()

    def __enter__(self) -> MeteorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _score_line(hypothesis: str, references: Sequence[str]) -> str:
    # exactly Meteor._stat: the hypothesis loses '|||' and double spaces, references are joined
    hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
    return " ||| ".join(("SCORE", " ||| ".join(references), hypothesis))


def _read_line(stream: IO[bytes]) -> str:
    raw = stream.readline()
    if not raw:
        raise EOFError("no output")
    return raw.decode().strip()


def _why(proc: subprocess.Popen[bytes], exc: BaseException) -> str:
    code = proc.poll()
    if code is not None and code < 0:
        return f"killed after no reply within the deadline (signal {-code})"
    return f"{type(exc).__name__}: {exc}" if code is None else f"exit status {code}"
