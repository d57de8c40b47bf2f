"""On a terminal, a run shows a live progress bar with rate and ETA beside the guide's lines."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from tests.conftest import REPO, World, subprocess_env


def test_a_terminal_gets_a_progress_bar_with_rate(world: World) -> None:
    args = world.run_args("--num_samples", "6", "--batch_size", "2")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cobra_eval", *args],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO,
        env=subprocess_env(COBRA_TEST_DELAY="0.4", COLUMNS="120", TERM="xterm"),
    )  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the other end closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert "Processed 6/6 samples..." in screen
    assert "samples/s" in screen  # the bar's rate column
    assert "\x1b[" in screen  # drawn with terminal control sequences
