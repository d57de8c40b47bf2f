"""A process that ran a model ends without collecting its garbage one last time."""

from __future__ import annotations

import atexit
import gc


def freeze_heap_at_exit() -> None:
    """Make interpreter shutdown skip its full garbage collections (idempotent).

    Shutdown collects every object alive, and with transformers and a model loaded
    that took over a second after every run (benchmarks.run_overhead times it).
    Frozen objects are skipped; everything a command writes is committed and closed
    before then. Registering again replaces the earlier registration: in-process
    callers such as tests invoke the CLI many times.
    """
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
