"""METEOR's text normalization, done before its JVM sees the text so that it can score
with ``-lower`` instead of ``-norm``: the same statistics for a third less of its CPU.

pycocoevalcap starts METEOR with ``-norm``. For every ``SCORE`` line it then runs
``Normalizer.normalizeLine(text, English, keep punctuation)`` over the hypothesis
and each reference, and lower-cases them, before aligning. Those regular
expressions are about a third of METEOR's scoring CPU. With ``-lower`` METEOR only
lower-cases (``MeteorConfiguration`` maps ``-lower`` to ``NORMALIZE_LC_ONLY``, which
``MeteorScorer.setNormalize`` turns into normalize off, punctuation kept,
lower-case on; nothing else reads the setting), so texts that arrive already
normalized are scored exactly as before.

Most texts METEOR sees here are PTB-tokenized: lower-case words, digits and single
spaces. For a text of only ``a-z``, ``0-9`` and spaces (``PLAIN``), every step of
``normalizeLine`` leaves it as it is except the last, which collapses runs of spaces
and trims: no character it splits, joins or escapes occurs (punctuation, quotes,
dashes, dots, commas, apostrophes), and the upper-case ``DOTMULTI`` markers it
unescapes cannot. So Python normalizes those (``" ".join(text.split())``), and
every other text goes through the jar's own ``Normalizer``, in one JVM started the
first time a text needs it and kept until ``close``.

A ``SCORE`` line is split as METEOR splits it (at ``|||``, each piece trimmed as
Java trims), each piece normalized, and the line joined again: normalized text
never holds ``|||`` (the normalizer spaces out every ``|``) nor leading or
trailing spaces, so METEOR reads back exactly the normalized pieces.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from cobra_eval.metrics.corpus import pycocoevalcap_dir

#: Texts whose METEOR normalization is only collapsing spaces (see the module docstring).
PLAIN = re.compile("[a-z0-9 ]*")
#: Seconds the normalizer JVM may take to start and answer one request.
NORMALIZE_TIMEOUT_S = 300
#: String.trim's characters: those up to U+0020.
JAVA_TRIMMED = "".join(chr(c) for c in range(0x21))
SEPARATOR = "|||"
#: Every METEOR JVM's options. METEOR reads numbers (its own statistics lines) and
#: lower-cases words in the JVM's default locale: under a German one every EVAL fails,
#: under a Turkish one 'I' lower-cases to a dotless i, so English whatever the
#: machine's. The serial collector and C1 only: its requests are short, and C2's
#: compilations and the default collector cost more CPU and memory than they save
#: (metric_cost's METEOR JVM line); the same output, as Java's arithmetic is strict.
#: A JVM without a flag ignores it.
JVM_OPTIONS = (
    "-Duser.language=en", "-Duser.country=US", "-XX:+IgnoreUnrecognizedVMOptions",
    "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
)  # fmt: skip


class Jvm:
    """One JVM answering on its stdout: started on first use (again after it died), killed
    by kill. The caller serializes its use."""

    def __init__(
        self, command: Callable[[], list[str]], cwd: Callable[[], Path] | None = None
    ) -> None:
        """command, cwd: made when the JVM starts (its arguments may depend on what is
        ready; a run that never starts it needs none of pycocoevalcap's files)."""
        self.command, self.cwd = command, cwd
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Its process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def running(self) -> subprocess.Popen[bytes]:
        """The process, started if it is not running."""
        if self._proc is None or self._proc.poll() is not None:
            cwd = self.cwd() if self.cwd else None
            self._proc = subprocess.Popen(
                self.command(), cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        return self._proc

    def kill(self) -> None:
        """Kill it and wait for it, if it was started."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


class NormalizerError(RuntimeError):
    """METEOR's normalizer JVM died, timed out or answered the wrong number of lines."""


def meteor_jar() -> Path:
    return pycocoevalcap_dir() / "meteor" / "meteor-1.5.jar"


def java_pieces(line: str) -> list[str]:
    """line.split("\\|\\|\\|") in Java (trailing empty pieces dropped), each piece trimmed."""
    pieces = line.split(SEPARATOR)
    while pieces and not pieces[-1]:
        pieces.pop()
    return [piece.strip(JAVA_TRIMMED) for piece in pieces]


class MeteorNormalizer:
    """METEOR's ``normalizeLine`` (English, punctuation kept) of many texts at a time."""

    def __init__(self, timeout_s: float = NORMALIZE_TIMEOUT_S):
        self.timeout_s = timeout_s
        # UTF-8 in and out whatever the machine's locale
        self._jvm = Jvm(
            lambda: ["java", *JVM_OPTIONS, "-Dfile.encoding=UTF-8", "-Dsun.stdout.encoding=UTF-8",
                     "-cp", str(meteor_jar()), "edu.cmu.meteor.util.Normalizer", "en", "true"]
        )  # fmt: skip
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The normalizer JVM's process id while one runs (None until a text needed it)."""
        return self._jvm.pid

    def normalize(self, texts: Sequence[str]) -> list[str]:
        """Each text as METEOR's ``-norm`` would align it, before lower-casing.

        A text with a line break cannot be sent (the normalizer, like METEOR, reads
        a line at a time): ValueError.
        """
        plain = [PLAIN.fullmatch(text) is not None for text in texts]
        out = [" ".join(text.split()) if p else "" for text, p in zip(texts, plain, strict=True)]
        rest = [k for k, p in enumerate(plain) if not p]
        if rest:
            for k, text in zip(rest, self._ask([texts[k] for k in rest]), strict=True):
                out[k] = text
        return out

    def _ask(self, texts: list[str]) -> list[str]:
        if any("\n" in text or "\r" in text for text in texts):
            raise ValueError("METEOR cannot score a text with a line break")
        data = "".join(f"{text}\n" for text in texts).encode("utf-8")
        with self._lock:
            proc = self._jvm.running()
            assert proc.stdin is not None and proc.stdout is not None
            # a wedged JVM must not hang the run: killed at the deadline, which ends the reads
            timer = threading.Timer(self.timeout_s, proc.kill)
            # written from another thread: replies come while a long request is still going in
            writer = threading.Thread(target=_write, args=(proc, data), daemon=True)
            timer.start()
            writer.start()
            try:
                replies = [proc.stdout.readline() for _ in texts]
            finally:
                timer.cancel()
                writer.join()
            answered = sum(reply.endswith(b"\n") for reply in replies)
            if answered < len(texts):
                self._jvm.kill()
                raise NormalizerError(
                    f"METEOR's normalizer stopped after {answered} of {len(texts)} texts"
                )
        return [reply[:-1].decode("utf-8") for reply in replies]

    def close(self) -> None:
        """Stop the normalizer JVM, if one was started (a later text starts another)."""
        with self._lock:
            self._jvm.kill()

    def __enter__(self) -> MeteorNormalizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def normalized_lines(lines: Sequence[str], normalizer: MeteorNormalizer) -> list[str]:
    """``SCORE`` lines with every piece normalized, with one normalizer request for all."""
    split = [java_pieces(line) for line in lines]
    # fewer than three pieces: METEOR answers an error for the line, normalized or not
    scored = [k for k, pieces in enumerate(split) if len(pieces) >= 3]
    texts = normalizer.normalize([text for k in scored for text in split[k][1:]])
    out = list(lines)
    at = 0
    for k in scored:
        n = len(split[k]) - 1
        out[k] = f" {SEPARATOR} ".join([split[k][0], *texts[at : at + n]])
        at += n
    return out


def _write(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        proc.stdin.flush()
    except OSError:  # it died: the reads end and say so
        pass
