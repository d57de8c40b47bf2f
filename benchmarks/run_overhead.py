"""What a run adds to the model's own time, on the bundled demo model at batch 16.

    python -m benchmarks.run_overhead [--samples 1000] [--repeats 3]

1. Tool overhead. The same loaded backend first generates the samples in a bare
   loop (batches of 16, baseline prompt: the model's time and nothing else), then
   runs them through ``run_evaluation`` with ``--metrics none`` (fresh database
   and folder, checkpoint every 10, generation cache on, as by default).
   Overhead = run time / bare generation time - 1: store, claims, cache,
   checkpoint exports, everything but generation. "Loop" times the run from its
   first generation to its last commit (what grows with N); "whole" adds opening
   the database, planning and the final results file. Each repeat pairs a bare
   loop with the run right after it, and the figure is the median of the pairs'
   overheads: on a shared machine whose speed drifts by more than the overhead,
   only neighbours compare.
2. Scoring overlapped with generation: wall time of whole demo runs as a user
   starts them (``python -m cobra_eval ... --batch_size 16``, a new process each,
   model loading included) with every metric (BLEU, METEOR, ROUGE-L, CIDEr-D;
   SPICE is unavailable offline) and with the Java-free ones (BLEU, ROUGE-L,
   CIDEr-D; tokenization still runs in a JVM), each as the median of its ratio
   to the same repeat's ``--metrics none`` run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cobra_eval.backends import BackendOptions, GenerationRequest, create_backend
from cobra_eval.config import GenerationParams, RunSettings
from cobra_eval.datasets import load_dataset, select_samples
from cobra_eval.demo import DEMO_MODEL_DIR
from cobra_eval.methods.baseline import PROMPT
from cobra_eval.metrics import parse_metric_list
from cobra_eval.progress import SilentReporter
from cobra_eval.runner import run_evaluation

BATCH = 16


class LoopClock(SilentReporter):
    """Times a run's loop: from the method's start to its last committed sample."""

    def __init__(self) -> None:
        super().__init__()
        self.started = self.last = 0.0

    def start_method(self, method: str, total: int, done: int) -> None:
        self.started = time.perf_counter()

    def processed(self, count: int, total: int, cached: bool = False) -> None:
        self.last = time.perf_counter()


def bare_generation(backend, n: int) -> float:
    samples = select_samples(load_dataset("demo"), n).samples
    requests = [GenerationRequest(image_path=s.image_path, prompt=PROMPT) for s in samples]
    params = GenerationParams()
    started = time.perf_counter()
    for i in range(0, len(requests), BATCH):
        backend.generate(requests[i : i + BATCH], params)
    return time.perf_counter() - started


def one_run(backend, n: int, folder: Path) -> tuple[float, float]:
    settings = RunSettings(
        method="baseline",
        num_samples=n,
        batch_size=BATCH,
        metrics=parse_metric_list("none"),
        output_dir=folder,
        fresh=True,
    )
    clock = LoopClock()
    started = time.perf_counter()
    run_evaluation(settings, backend=backend, reporter=clock)
    return time.perf_counter() - started, clock.last - clock.started


def cli_run(n: int, metrics: str, folder: Path) -> float:
    command = [sys.executable, "-m", "cobra_eval", "--method", "baseline", "--num_samples",
               str(n), "--batch_size", str(BATCH), "--metrics", metrics, "--output_dir",
               str(folder)]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def show(values: list[float], unit: str = "s") -> str:
    return f"{statistics.median(values):.2f} {unit} (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    backend = create_backend("hf", BackendOptions(model=str(DEMO_MODEL_DIR)))
    bare_generation(backend, BATCH)  # load the weights before timing
    bare, whole, loop = [], [], []
    cli: dict[str, list[float]] = {
        "none": [],
        "bleu,meteor,rouge,cider": [],
        "bleu,rouge,cider": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            bare.append(bare_generation(backend, args.samples))
            total, inner = one_run(backend, args.samples, Path(tmp) / f"run{k}")
            whole.append(total)
            loop.append(inner)
            for metrics, times in cli.items():
                times.append(
                    cli_run(args.samples, metrics, Path(tmp) / f"cli{k}{len(times)}{metrics}")
                )
    print(f"{args.samples} demo samples at batch {BATCH}, {args.repeats} repeats (median, min-max)")
    print(f"bare generation: {show(bare)}")
    print(f"run, metrics none, loaded backend: whole {show(whole)}; loop {show(loop)}")
    pairs = [(run / gen - 1) * 100 for run, gen in zip(loop, bare, strict=True)]
    pairs_whole = [(run / gen - 1) * 100 for run, gen in zip(whole, bare, strict=True)]
    print(f"tool overhead of each repeat (loop vs the bare generation before it): "
          f"{', '.join(f'{x:.1f}%' for x in pairs)}")  # fmt: skip
    print(
        f"tool overhead (metrics none vs bare generation): loop "
        f"{statistics.median(pairs):.1f}%, whole {statistics.median(pairs_whole):.1f}%"
    )
    for metrics, times in cli.items():
        # each repeat's ratio to the --metrics none run of the same repeat, then the median
        ratio = statistics.median(t / n for t, n in zip(times, cli["none"], strict=True))
        print(f"demo run as started from the shell, --metrics {metrics}: {show(times)}; "
              f"{ratio:.3f}x the --metrics none run")  # fmt: skip


if __name__ == "__main__":
    main()
