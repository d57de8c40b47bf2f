"""Scoring overlapped with a model that leaves the CPU idle, as one on a GPU does.

    python -m benchmarks.offcpu_overlap [--samples 1000] [--repeats 3]

run_overhead's "all metrics vs none" runs the demo model, which keeps both of
this machine's cores busy: there, scoring can only take CPU from generation. A
model on a GPU leaves the CPU to the scorers, and what counts is whether the
model ever waits for them. Here the backend is OffCpuBackend: it sleeps
SECONDS_PER_SAMPLE for each sample of a batch (about the demo model's pace at
batch 16) and answers the demo's kind of caption, using no CPU meanwhile. Whole
runs are started from the shell with every metric, with the Java-free ones, and
with ``--metrics none`` (alternating, in that order, each repeat); each ratio is
the median of the runs' ratios to the same repeat's none run. The sleep alone
is printed too: no run can take less. So is what bounds the all-metrics run:
METEOR's JVM alone, started as a run starts it, timed to its first answer and
then through the none run's captions, a batch at a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.run_overhead import BATCH, SleepingBackend, cli_run, show
from cobra_eval.backends import BackendOptions
from cobra_eval.metrics.meteor import MeteorProcess

#: The sleep per sample: the demo model's time per caption at batch 16 on this machine.
SECONDS_PER_SAMPLE = 0.006
BACKEND = ["--backend", "benchmarks.offcpu_overlap:OffCpuBackend"]
METRICS = ("bleu,meteor,rouge,cider", "bleu,rouge,cider", "none")


class OffCpuBackend(SleepingBackend):
    """Answers after sleeping SECONDS_PER_SAMPLE a sample: the CPU is left to the tool.

    Loaded by the CLI (``--backend benchmarks.offcpu_overlap:OffCpuBackend``).
    """

    def __init__(self, options: BackendOptions | None = None):
        super().__init__(SECONDS_PER_SAMPLE)
        self.options = options

    def identity(self) -> dict[str, Any]:
        return {"name": "off-cpu", "revision": "1"}


def meteor_alone(results_file: Path) -> tuple[float, float]:
    """Seconds from starting METEOR (cutting its paraphrase table, then its JVM) to its
    first answer, then for every caption."""
    results = json.loads(results_file.read_text())["results"]
    pairs = [(r["generated_caption"], r["reference_captions"]) for r in results]
    started = time.perf_counter()
    with MeteorProcess() as meteor:
        # as a run starts it: on the paraphrase entries these references can match
        meteor.prepare(lambda: [ref for _, refs in pairs for ref in refs])
        meteor.stats_many(pairs[:1])
        answered = time.perf_counter()
        for i in range(0, len(pairs), BATCH):
            meteor.stats_many(pairs[i : i + BATCH])
        return answered - started, time.perf_counter() - answered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.samples
    walls: dict[str, list[float]] = {metrics: [] for metrics in METRICS}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            for metrics, times in walls.items():
                folder = Path(tmp) / f"{k}-{metrics}"
                times.append(cli_run(n, metrics, folder, BACKEND)[0])
        captions = next((Path(tmp) / "0-none").glob("run_*/baseline/results_baseline.json"))
        alone = [meteor_alone(captions) for _ in range(args.repeats)]
    none = walls["none"]
    print(
        f"{n} samples at batch {BATCH} from a backend that sleeps {SECONDS_PER_SAMPLE * 1000:g} "
        f"ms a sample (a model off the CPU), {args.repeats} repeats (median, min-max); the "
        f"sleep alone: {n * SECONDS_PER_SAMPLE:.2f} s"
    )
    for metrics, times in walls.items():
        ratios = [t / base for t, base in zip(times, none, strict=True)]
        print(
            f"off-CPU run as started from the shell, --metrics {metrics}: {show(times)}; "
            f"{statistics.median(ratios):.3f}x the --metrics none run"
        )
    print(
        f"METEOR's JVM alone: first answer after {show([a for a, _ in alone])}; then the "
        f"{n} captions of the none run, batches of {BATCH}: {show([b for _, b in alone])}"
    )


if __name__ == "__main__":
    main()
