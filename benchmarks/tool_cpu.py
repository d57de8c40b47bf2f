"""The tool's own CPU time in a run, here and in another checkout, measured alternately.

    python -m benchmarks.tool_cpu [--samples 1000] [--rounds 3] [--against PATH]

A 1,000-sample ``--metrics none`` run at batch 16 with an instant in-process
backend (no model: the tool's work alone: claims, cache, commits, checkpoint
exports), as run_overhead's "tool CPU" line measures it: the process's CPU
seconds per run, the median of 3 runs after a warm-up, in a fresh process per
measurement. With --against (another checkout of this repository, e.g. a
``git worktree`` of an older commit, using this one's installed packages), the
two alternate round after round, so that a drift in this shared machine's
speed, which moves single figures by 10-20%, falls on both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

#: Runs measured per process, after one warm-up run (imports, first compilations).
RUNS = 3

# run in the measured checkout's own code; only what older checkouts have too (run_overhead's
# instant_cpu is newer than the code this was first compared with)
_MEASURE = """
import statistics, sys, tempfile
from pathlib import Path
from benchmarks.run_memory import InstantBackend
from benchmarks.run_overhead import cpu_seconds, one_run

n, runs = int(sys.argv[1]), int(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp:
    one_run(InstantBackend(), 64, Path(tmp) / "warm")
    seconds = []
    for k in range(runs):
        before = cpu_seconds()
        one_run(InstantBackend(), n, Path(tmp) / f"run{k}")
        seconds.append(cpu_seconds() - before)
print(statistics.median(seconds))
"""


def measure(checkout: Path, samples: int) -> float:
    """The median CPU seconds of RUNS instant-backend runs, in a fresh process of checkout."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(samples), str(RUNS)],
            env=env, cwd=cwd, check=True, capture_output=True, text=True,
        )  # fmt: skip
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", type=Path, help="Another checkout to measure alternately.")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    checkouts = {"this checkout": here}
    if args.against is not None:
        checkouts[f"{args.against}"] = args.against.resolve()
    figures: dict[str, list[float]] = {name: [] for name in checkouts}
    for _ in range(args.rounds):
        for name, path in checkouts.items():
            figures[name].append(measure(path, args.samples))
    print(f"tool CPU of a {args.samples}-sample run with an instant backend, {args.rounds} "
          f"rounds (each the median of {RUNS} runs in one process):")  # fmt: skip
    for name, values in figures.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {name}: median {statistics.median(values):.2f} s ({shown})")
    if args.against is not None:
        mine, theirs = figures.values()
        ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
        shown = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"  this checkout / the other, round by round: median "
              f"{statistics.median(ratios):.2f} ({shown})")  # fmt: skip


if __name__ == "__main__":
    main()
