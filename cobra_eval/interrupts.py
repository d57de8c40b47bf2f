"""Ctrl-C (or SIGTERM) in a run's process: the first stops the run, later ones let it stop."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

#: The signals that stop a run cleanly: Ctrl-C, and what kill and schedulers send.
_STOPS = (signal.SIGINT, signal.SIGTERM)
#: What a second press prints (once): the stop it interrupted is what keeps the work.
STILL_STOPPING = (
    "Still stopping: the samples already generated are being committed so that none is "
    "lost (this can wait for a scorer to start); it ends by itself"
)


@contextmanager
def patient_interrupts() -> Iterator[None]:
    """While in it, Ctrl-C raises KeyboardInterrupt once and a later press says
    STILL_STOPPING; once it was pressed, Ctrl-C is ignored after it (the process exits).

    SIGTERM counts as a press: it is what `kill`, `timeout`, `docker stop` and batch
    schedulers (a preempted job) send, and it deserves the same clean stop; its default
    would end the process at once, leaving the batches generated but not committed to
    the resume and the run marked running.

    A second KeyboardInterrupt would land in the stop itself, in whatever it was doing
    (a commit, closing the database): a traceback and a process killed by SIGINT instead
    of a clean exit, with the samples generated but not committed left to the resume.
    Nothing changes outside the main thread, where no signal handler can be installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    presses = 0

    def pressed(_signum: int, _frame: FrameType | None) -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            raise KeyboardInterrupt
        if presses == 2:
            print(STILL_STOPPING, file=sys.stderr, flush=True)

    before = {signum: signal.signal(signum, pressed) for signum in _STOPS}
    try:
        yield
    finally:
        # once pressed, the process is on its way out, and a press while it exits is ignored
        # (Python's own handler would be back during its shutdown, and end it by SIGINT)
        for signum, handler in before.items():
            signal.signal(signum, signal.SIG_IGN if presses else handler)
