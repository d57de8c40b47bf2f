"""Finishing a generated batch (score, commit, export) while the next batch generates.

The model is the run's bottleneck; scoring and storing a batch need none of it.
One background thread finishes batches in order, at most one at a time, so the
next generate call never waits for them. The scorers' Java work runs in their
own processes, and SQLite/PostgreSQL release the GIL while they work, so this
overlaps for real even on CPython.

A kill between a batch's generation and its commit loses no model work when the
generation cache is on: finishing a batch starts by committing its outputs to the
cache (the model's thread commits them itself when the previous batch is still
being finished), and the resume finds them there. With the cache off, the runner
finishes inline.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class BatchFinisher:
    """Runs finishing jobs one at a time, in order, in a background thread (or inline)."""

    def __init__(self, *, overlap: bool):
        self._executor = ThreadPoolExecutor(1, "finish-batch") if overlap else None
        self._pending: Future[None] | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Start finishing a batch once the previous one is done (re-raising its error)."""
        self.wait()
        if self._executor is None:
            job()
            return
        self._pending = self._executor.submit(job)

    def busy(self) -> bool:
        """Whether a batch is still being finished (a submit now would wait for it)."""
        return self._pending is not None and not self._pending.done()

    def wait(self) -> None:
        """Block until the batch in hand is finished; its error, if any, is raised here."""
        pending = self._pending
        if pending is None:
            return
        # cleared only once done: a Ctrl-C while waiting leaves it to be waited for again
        pending.result()
        self._pending = None

    def __enter__(self) -> BatchFinisher:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._executor is not None:
            # on an error the batch in hand still completes (nothing half-committed is left)
            self._executor.shutdown(wait=True)
