"""Finishing generated batches (score, commit, export) while the next batches generate.

The model is the run's bottleneck; scoring and storing a batch need none of it.
One background thread finishes batches in order, one at a time, and the model's
thread does not wait for it: batches queue up while the finisher is slow, up to
a bound. That matters most at a run's start, when METEOR's JVM loads its
paraphrase table for seconds before the first batch can be scored: the model
keeps generating meanwhile, and the finisher catches up once it is ready. The
scorers' Java work runs in their own processes, and SQLite/PostgreSQL release
the GIL while they work, so this overlaps for real even on CPython.

A kill between a batch's generation and its commit loses no model work when the
generation cache is on: the model's thread commits a batch's outputs to the cache
before it hands the batch over, and the resume finds them there. With the cache
off, the runner finishes each batch inline, before the next generates.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

#: Samples of generated batches that may wait to be finished: enough to keep a model
#: generating through METEOR's start-up, few enough that waiting for them stays short.
MAX_PENDING_SAMPLES = 1024


class _Skipped(Exception):
    """A job not run because one before it failed (that failure is the one raised)."""


class _Job:
    """A submitted job: the sample ids it finishes, and its outcome once it has run."""

    __slots__ = ("future", "holds", "run", "started")

    def __init__(self, run: Callable[[], None], holds: tuple[int, ...]):
        self.run, self.holds = run, holds
        self.future: Future[None] = Future()
        self.started = False


class BatchFinisher:
    """Runs finishing jobs one at a time, in order, in a background thread (or inline).

    Up to max_pending jobs may be submitted and not yet finished; a submit beyond
    that waits for the oldest. After a job fails, the jobs queued behind it are
    not run, and the failure is raised by the next submit or wait.
    """

    def __init__(self, *, overlap: bool, max_pending: int = 1):
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._executor = ThreadPoolExecutor(1, "finish-batch") if overlap else None
        self._max_pending = max_pending
        self._pending: deque[_Job] = deque()
        self._failed = threading.Event()

    def submit(self, job: Callable[[], None], holds: Sequence[int] = ()) -> None:
        """Queue a job (holds: the sample ids it finishes), waiting while too many are queued.

        Raises the error of a job that failed since the last submit or wait.
        """
        self._collect(keep=self._max_pending - 1)
        if self._executor is None:
            job()
            return
        # one append is the moment the job is held: a Ctrl-C just before it leaves the
        # job out, just after it leaves it queued, and whatever is queued runs (a Ctrl-C
        # inside the executor's submit, after it queued the job, used to leave a job
        # that ran unannounced)
        self._pending.append(_Job(job, tuple(holds)))
        self._executor.submit(self._drain)

    def holding(self) -> list[int]:
        """The sample ids of the jobs submitted and not finished yet."""
        return [i for job in list(self._pending) if not job.future.done() for i in job.holds]

    def wait(self) -> None:
        """Block until every submitted job is finished; a job's error is raised here."""
        self._kick()
        self._collect(keep=0)

    def _kick(self) -> None:
        """Make sure a drain follows every job queued (a submit stopped between the two)."""
        if self._executor is not None and any(not job.started for job in list(self._pending)):
            self._executor.submit(self._drain)

    def _drain(self) -> None:
        """Run the queued jobs not started yet, oldest first (in the finisher's thread)."""
        while True:
            job = next((j for j in list(self._pending) if not j.started), None)
            if job is None:
                return
            job.started = True
            if self._failed.is_set():
                job.future.set_exception(_Skipped())
                continue
            try:
                job.run()
            except BaseException as exc:
                self._failed.set()
                job.future.set_exception(exc)
            else:
                job.future.set_result(None)

    def _collect(self, *, keep: int) -> None:
        """Drop finished jobs, waiting for the oldest until at most keep are left."""
        while self._pending and (len(self._pending) > keep or self._pending[0].future.done()):
            # behind a failure (raised already) a job was skipped; a job is removed only once
            # done: a Ctrl-C while waiting leaves it to be waited for again
            with contextlib.suppress(_Skipped):
                self._pending[0].future.result()
            self._pending.popleft()

    def __enter__(self) -> BatchFinisher:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._executor is not None:
            # on an error the jobs queued still complete (nothing half-committed is left)
            self._kick()
            self._executor.shutdown(wait=True)
