"""METEOR 1.5 through pycocoevalcap's jar, driven the way pycocoevalcap drives it.

pycocoevalcap's ``Meteor`` class scores a set in one call and has no way back
from a failure (its lock stays held and the process hangs at exit). A run needs
two separate steps instead: the statistics line of each sample as it lands,
and a corpus score over any set of those lines at every checkpoint. The
``SCORE`` and ``EVAL`` lines are built as ``pycocoevalcap/meteor/meteor.py``
builds them, so the scores are the same; a corpus ``EVAL`` sends the lines'
exact sum (``pooled_line``) instead of every line, which ``EVAL`` scores to the
same double. The JVM runs in an English locale whatever the machine's; every
read has a deadline after which it is killed, and closing always kills it.
Given the references it will score against (``prepare``), the JVM loads only the
paraphrase entries they can match (``paraphrases``): the same scores, started
in about a second instead of ten. Texts are normalized as ``-norm`` normalizes
them before they are sent, and the JVM runs with ``-lower`` (``meteor_text``):
the same scores for a third less of its CPU.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import IO

import numpy as np

from cobra_eval.metrics.corpus import pycocoevalcap_dir
from cobra_eval.metrics.meteor_text import (
    JVM_OPTIONS,
    Jvm,
    MeteorNormalizer,
    NormalizerError,
    normalized_lines,
)
from cobra_eval.store.engine import process_alive

#: Seconds one reply of the METEOR JVM may take (its start-up included) before it is killed.
METEOR_TIMEOUT_S = 120
#: Statistics requests written before their replies are read (each reply is ~100 bytes).
STATS_CHUNK = 64
#: Requests of a rehearsal sent at a time: a real request waits for one such chunk at most.
REHEARSAL_CHUNK = 16

#: The cut table's folder, in the temp folder, is named for its process (this prefix, the pid,
#: a dash): a process killed before it could remove its folder leaves one a later cut removes.
CUT_FOLDER_PREFIX = "cobra-eval-meteor-"

#: (tokenized hypothesis, its tokenized references) pairs.
Pairs = Sequence[tuple[str, Sequence[str]]]

_log = logging.getLogger(__name__)


def cut_folder() -> Path:
    """A new folder for this process's cut table, once those of dead processes are removed."""
    base = Path(tempfile.gettempdir())
    for left in base.glob(f"{CUT_FOLDER_PREFIX}*-*"):
        pid = left.name[len(CUT_FOLDER_PREFIX) :].split("-", 1)[0]
        # a cut is 1-6 MB: ten runs killed by SIGKILL (or OOM) must not leave ten behind
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(left, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{CUT_FOLDER_PREFIX}{os.getpid()}-", dir=base))


class MeteorError(RuntimeError):
    """The METEOR process died, timed out or answered nonsense."""


class MeteorProcess:
    """One METEOR JVM (started on first use), scoring statistics lines and sets of them."""

    def __init__(self, timeout_s: float = METEOR_TIMEOUT_S, table: Path | None = None):
        """table: the paraphrase table the JVM loads (gzip; None: METEOR's own)."""
        self.timeout_s = timeout_s
        self.table = table
        # the paraphrase table is chosen when the JVM starts (the cut, once it is ready);
        # -lower: the texts come normalized as -norm would (meteor_text)
        self._jvm = Jvm(
            lambda: ["java", *JVM_OPTIONS, "-jar", "-Xmx2G", "meteor-1.5.jar", "-", "-",
                     "-stdio", "-l", "en", "-lower", *self._paraphrase_args()],
            cwd=lambda: pycocoevalcap_dir() / "meteor",
        )  # fmt: skip
        self._lock = threading.Lock()
        #: the table cut to the references (None: the whole table), once prepared
        self._cut: Future[Path | None] | None = None
        self._folder: Path | None = None
        #: started only if a text is not plain words (most are: meteor_text)
        self._normalizer = MeteorNormalizer(timeout_s)
        #: changes with every real request and every close: a rehearsal stops when it does
        self._uses = 0

    def prepare(
        self, references: Callable[[], Iterable[str]], rehearsal: Callable[[], Pairs] | None = None
    ) -> Future[Path | None] | None:
        """Cut the paraphrase table to these references and start the JVM on it, in the
        background. references: every reference text that will be scored, as sent;
        rehearsal: pairs to score once the JVM is up, answers dropped (``rehearse``).

        Scoring before the cut is ready waits for it; if it cannot be made, the JVM
        loads the whole table. Nothing here changes a score. Returns the cut's future
        (done once the references are read, or never will be), or None where no cut
        is made (nothing reads the references).
        """
        from cobra_eval.metrics.paraphrases import cut_table_or_none

        try:
            folder = cut_folder()
        except OSError as exc:  # no room for the cut table: the whole one, as before
            _log.warning("METEOR loads its whole paraphrase table: %s", exc)
            self.warm_up()
            return None
        cut: Future[Path | None] = Future()
        self._cut, self._folder = cut, folder
        uses = self._uses  # a real request from now on makes the rehearsal pointless

        def texts() -> Iterator[str]:
            yield from references()

        def cut_and_start() -> None:
            path = None
            try:
                # any failure, reading the references included (texts is lazy), gives None
                path = cut_table_or_none(
                    texts(), folder / "paraphrases.gz", self.table, self._normalizer
                )
            finally:
                cut.set_result(path)
            with self._lock:
                if self._cut is not cut:  # closed meanwhile
                    shutil.rmtree(folder, ignore_errors=True)
                    return
                self._jvm.running()
            if rehearsal is not None:
                self._rehearse(rehearsal(), uses)

        threading.Thread(target=cut_and_start, name="meteor-paraphrases", daemon=True).start()
        return cut

    def stats(self, hypothesis: str, references: Sequence[str]) -> str:
        """The statistics line of one tokenized caption against its tokenized references."""
        return self.stats_many([(hypothesis, references)])[0]

    @property
    def pid(self) -> int | None:
        """The JVM's process id while one runs."""
        return self._jvm.pid

    def warm_up(self) -> None:
        """Start the JVM now (it loads for seconds) so it is ready when the first sample lands."""
        with self._lock:
            self._jvm.running()

    def rehearse(self, pairs: Pairs) -> int:
        """Score these pairs on the running JVM and drop the answers, until the first real
        request or close; returns how many were scored.

        A JVM's first answers cost it twice the CPU of later ones (its code is
        compiled, its caches fill: 0.6 CPU-s over a run's first 1,000 captions). A
        run rehearses on its references while its model loads, when a core is idle,
        instead of paying that while it generates. Starts no JVM; changes no score.
        """
        return self._rehearse(pairs, self._uses)

    def _rehearse(self, pairs: Pairs, uses: int) -> int:
        try:
            lines = self._score_lines(pairs)
        except MeteorError:
            return 0  # a text it cannot send: a real request says so, if one comes
        done = 0
        for start in range(0, len(lines), REHEARSAL_CHUNK):
            chunk = lines[start : start + REHEARSAL_CHUNK]
            with self._lock:
                if self._uses != uses or self._jvm.pid is None:
                    break
                try:
                    self._ask("\n".join(chunk), len(chunk))
                except MeteorError:
                    break  # the JVM was killed: the next real request starts another
            done += len(chunk)
        return done

    def stats_many(self, pairs: Pairs) -> list[str]:
        """The statistics lines of many (hypothesis, references), pipelined in chunks."""
        self._uses += 1
        lines = self._score_lines(pairs)
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
        self._uses += 1
        line = "EVAL" + "".join(f" ||| {s}" for s in stats)
        with self._lock:
            replies = self._ask(line, len(stats) + 1)
        try:
            values = [float(r) for r in replies]
        except ValueError:
            self._jvm.kill()
            raise MeteorError(f"METEOR answered {replies[-1]!r} instead of a score") from None
        return values[-1], values[:-1]

    def corpus(self, stats: Sequence[str], counts: Sequence[bytes | None] | None = None) -> float:
        """Corpus METEOR of a set of statistics lines: what ``evaluate`` gives first, faster.

        A checkpoint needs only the corpus score, and an ``EVAL`` of every line
        costs the JVM time in proportion to the run so far at each checkpoint
        (about 4 CPU-seconds over a 1,000-sample run's checkpoints). Their
        exact sum (``pooled_line``) is one line with the same score. counts are
        the lines' ``stats_counts`` where the caller kept them.
        """
        if counts is None:
            counts = [stats_counts(line) for line in stats]
        packed = [c for c in counts if c is not None]
        line = pooled_line(packed) if len(packed) == len(stats) else None
        return self.evaluate([line] if line is not None else stats)[0]

    def _score_lines(self, pairs: Pairs) -> list[str]:
        """The pairs' SCORE lines, normalized as METEOR's -norm would (MeteorError if not)."""
        lines = [_score_line(hyp, references) for hyp, references in pairs]
        try:
            return normalized_lines(lines, self._normalizer)
        except (NormalizerError, ValueError) as exc:
            raise MeteorError(str(exc)) from None

    def _ask(self, line: str, n_replies: int) -> list[str]:
        proc = self._jvm.running()
        assert proc.stdin is not None and proc.stdout is not None
        # a reply that never comes (a wedged JVM) must not hang the run: kill it at the deadline
        timer = threading.Timer(self.timeout_s, proc.kill)
        timer.start()
        try:
            proc.stdin.write(f"{line}\n".encode())
            proc.stdin.flush()
            replies = [_read_line(proc.stdout) for _ in range(n_replies)]
        except (OSError, EOFError) as exc:
            self._jvm.kill()
            raise MeteorError(f"the METEOR process stopped: {_why(proc, exc)}") from None
        finally:
            timer.cancel()
        return replies

    def _paraphrase_args(self) -> list[str]:
        cut = self._cut.result() if self._cut is not None else None
        # a missing file would make METEOR use no paraphrases at all (it only warns)
        table = cut if cut is not None and cut.is_file() else self.table
        return ["-a", str(table)] if table is not None else []

    def close(self) -> None:
        """Stop the JVM, if one was started; a later use starts one on the whole table."""
        self._uses += 1
        self._normalizer.close()
        with self._lock:
            self._jvm.kill()
            cut, folder = self._cut, self._folder
            self._cut = self._folder = None
            # a cut still being made is removed by its thread when it is done
            if folder is not None and cut is not None and cut.done():
                shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self) -> MeteorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# testLength, referenceLength, test and reference function words, then for each of 4 stages
# test and reference content matches, test and reference function-word matches; then
# chunks, test and reference word matches (the order MeteorStats(String) reads them in)
_STATS_FIELDS = 23
_CHUNKS = 20


def stats_counts(line: str) -> bytes | None:
    """A statistics line's 23 counts, one byte each; None unless all are integers 0-255."""
    try:
        values = [float(token) for token in line.split()]
    except ValueError:
        return None
    if len(values) != _STATS_FIELDS or not all(0 <= v <= 255 and v.is_integer() for v in values):
        return None
    return bytes(int(v) for v in values)


def pooled_line(counts: Sequence[bytes]) -> str | None:
    """One statistics line whose ``EVAL`` score is the corpus score of these lines, or None.

    ``EVAL`` scores the sum of its lines' statistics (``MeteorStats.addStats``):
    every field is added, except the chunks of a line that matched every word
    in one chunk. The statistics are counts, summed here as integers by the
    same rule, so the one line holds exactly the sums Java's double additions
    reach (every partial sum of non-negative integers below 2**53 is exact),
    and its score is the same double. None for no lines, or for a sum that the
    rule would treat differently as one line.
    """
    if not counts:
        return None
    table = np.frombuffer(b"".join(counts), dtype=np.uint8).reshape(len(counts), _STATS_FIELDS)
    table = table.astype(np.int64)
    table[_one_whole_chunk(table), _CHUNKS] = 0
    totals = table.sum(axis=0, keepdims=True)
    if _one_whole_chunk(totals)[0]:
        return None
    return " ".join(f"{int(total)}.0" for total in totals[0])


def _one_whole_chunk(table: np.ndarray) -> np.ndarray:
    """Per row: whether addStats leaves its chunks out (all words matched, in one chunk)."""
    all_test = table[:, 4:_CHUNKS:2].sum(axis=1) == table[:, 0]
    all_reference = table[:, 5:_CHUNKS:2].sum(axis=1) == table[:, 1]
    whole: np.ndarray = all_test & all_reference & (table[:, _CHUNKS] == 1)
    return whole


def _score_line(hypothesis: str, references: Sequence[str]) -> str:
    # exactly Meteor._stat: the hypothesis loses '|||' and double spaces, references are
    # joined (then normalized as -norm would: MeteorProcess._score_lines)
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
