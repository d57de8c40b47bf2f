"""Run the CLI in this process and SIGKILL it at the N-th hit of one point.

    python -m tests.kill_points POINT N -- CLI ARGS...

Points:
  export    at each rename of checkpoint_io (os.replace): a file's temp copy is written and
            fsynced, or latest's temp hard link made; the rename is not yet done. A
            checkpoint hits it twice (numbered file, then latest), a final results file once
  commit    inside Store.commit_results: a batch's inserts ran (one hit per sample), the
            transaction is not committed
  generate  the N-th backend generate() call returned, nothing of its batch is committed

Before dying it writes ``kill_points: SIGKILL at POINT #N`` to stderr, so a test can tell
the kill it planned from any other death. If the point is hit fewer than N times the
run simply finishes (and the test that expected a kill fails).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

POINTS = ("export", "commit", "generate")


def _arm(point: str, n: int) -> Callable[[], None]:
    hits = 0

    def hit() -> None:
        nonlocal hits
        hits += 1
        if hits == n:
            sys.stdout.flush()
            print(f"kill_points: SIGKILL at {point} #{n}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    return hit


def install(point: str, n: int) -> None:
    """Patch the one function behind POINT so the N-th hit kills this process."""
    hit = _arm(point, n)
    if point == "export":
        from cobra_eval.store import checkpoint_io

        class _OsDyingAtReplace:
            """The os module as checkpoint_io sees it, with replace() as the kill point."""

            def __getattr__(self, name: str) -> Any:
                return getattr(os, name)

            @staticmethod
            def replace(src: Any, dst: Any) -> None:
                hit()
                os.replace(src, dst)

        checkpoint_io.os = _OsDyingAtReplace()  # type: ignore[assignment]
    elif point == "commit":
        from cobra_eval.store import result_writer

        real_write = result_writer.write_results

        def write_results(*args: Any, **kwargs: Any) -> list[bool]:
            written = real_write(*args, **kwargs)
            for _ in written:  # one hit per sample of the batch
                hit()  # still inside Store.commit_results' `with engine.begin()`
            return written

        result_writer.write_results = write_results  # type: ignore[assignment]
    elif point == "generate":
        from tests.stand_in import EchoBackend

        real_generate = EchoBackend.generate

        def generate(self: EchoBackend, requests: Any, params: Any) -> list[str]:
            outputs = real_generate(self, requests, params)
            hit()
            return outputs

        EchoBackend.generate = generate  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown kill point {point!r}; choose one of {', '.join(POINTS)}")


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[2] != "--":
        raise SystemExit("usage: python -m tests.kill_points POINT N -- CLI ARGS...")
    point, n = argv[0], int(argv[1])
    if n < 1:
        raise SystemExit("N counts hits from 1")
    install(point, n)
    from cobra_eval.cli import main as cli_main

    cli_main(args=argv[3:], prog_name="cobra_eval")


if __name__ == "__main__":
    main(sys.argv[1:])
