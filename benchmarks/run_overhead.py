"""What a run adds to the model's own time, on the bundled demo model at batch 16.

    python -m benchmarks.run_overhead [--samples 1000] [--repeats 5]

1. Tool overhead. The same loaded backend generates the samples in a bare loop
   (batches of 16, baseline prompt: the model's time and nothing else), and runs
   them through ``run_evaluation`` with ``--metrics none`` (fresh database and
   folder, checkpoint every 10, generation cache on, as by default). Each repeat
   is bare, run, run, bare (ABBA: a drift in this shared machine's speed, which
   is larger than the overhead, cancels to first order), after an ``os.sync()``
   so that earlier benchmarks' writes are not flushed inside this one's fsyncs.
   Overhead = the two runs / the two bare loops - 1; the figure is the median of
   the repeats. "Loop" times a run from its first generation to its last commit
   (what grows with N); "whole" adds opening the database, planning and the final
   results file.
2. Why it is what it is, without the noise: the CPU time of the same run with an
   instant in-process backend (the tool's work alone), and how much a second
   process that keeps 15% of one core busy slows the bare loop (ABBA again): the
   demo model runs on both cores, so the tool's CPU comes out of generation.
   Then what the tool's CPU is spent on: the process's CPU in the loops of runs
   whose backend sleeps as long as the bare loop took a sample (a run's schedule:
   the finisher keeps up with the model, and no model uses the CPU), as run,
   without checkpoint exports (--checkpoint_interval 0), without the generation
   cache (--no_cache) and without both, alternating in every repeat.
3. Scoring overlapped with generation: wall time of whole demo runs as a user
   starts them (``python -m cobra_eval ... --batch_size 16``, a new process each,
   model loading included) with every metric (BLEU, METEOR, ROUGE-L, CIDEr-D;
   SPICE is unavailable offline) and with the Java-free ones (BLEU, ROUGE-L,
   CIDEr-D; tokenization still runs in a JVM), each as the median of its ratio
   to the same repeat's ``--metrics none`` run; with the CPU time each run used
   (its process and its JVMs). On 2 cores a run cannot take less wall time than
   half its CPU time, which bounds the ratio from below. That CPU includes the
   model's threads waiting on each other while a JVM holds a core, so a tighter
   bound that holds for any overlap is printed too: the --metrics none run's CPU
   plus the CPU of scoring its captions alone (every metric, a batch at a time as
   a run does, nothing else running), over the cores.
4. Process exit: the seconds from a demo run's command returning to its process
   ending, as the CLI leaves it (shutdown skips garbage collection: gc.freeze at
   exit) and with the freeze taken back, alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.run_memory import InstantBackend
from cobra_eval.backends import Backend, BackendOptions, GenerationRequest, create_backend
from cobra_eval.config import GenerationParams, RunSettings
from cobra_eval.datasets import load_dataset, select_samples
from cobra_eval.demo import DEMO_MODEL_DIR
from cobra_eval.methods.baseline import PROMPT
from cobra_eval.metrics import parse_metric_list
from cobra_eval.metrics.per_sample import PreparedScoring, SampleScorer
from cobra_eval.progress import SilentReporter
from cobra_eval.runner import run_evaluation

BATCH = 16
#: Samples of the runs whose process exit is timed (what is alive at exit, not N, matters).
EXIT_SAMPLES = 32
#: The share of one core the second process keeps busy in the contention measurement.
BUSY_SHARE = 0.15
# busy for 2 ms in every 2 ms / share, until killed
_BUSY_LOOP = (
    "import time\n"
    "while True:\n"
    "    t = time.perf_counter()\n"
    "    while time.perf_counter() - t < 0.002: pass\n"
    f"    time.sleep({0.002 / BUSY_SHARE - 0.002})\n"
)


class LoopClock(SilentReporter):
    """Times a run's loop: from the method's start to its last committed sample.

    Also the process's CPU seconds (every thread) from the method's start to the end
    of its loop, when every batch is finished (before the final results file).
    """

    def __init__(self) -> None:
        super().__init__()
        self.started = self.last = 0.0
        self.cpu_started = self.cpu = 0.0

    def start_method(self, method: str, total: int, done: int) -> None:
        self.started = time.perf_counter()
        self.cpu_started = cpu_seconds()

    def processed(self, count: int, total: int, cached: bool = False) -> None:
        self.last = time.perf_counter()

    def end_method(self) -> None:
        self.cpu = cpu_seconds() - self.cpu_started


class SleepingBackend(InstantBackend):
    """InstantBackend's answers after sleeping a fixed time a sample: a model off the CPU.

    A run's loop then keeps a real run's schedule (the finisher keeps up with the
    model) and the CPU the process uses is the tool's alone.
    """

    def __init__(self, seconds_per_sample: float) -> None:
        self.seconds_per_sample = seconds_per_sample

    def generate(self, requests: Sequence[GenerationRequest], params: GenerationParams) -> list:
        time.sleep(self.seconds_per_sample * len(requests))
        return super().generate(requests, params)


class TimedBackend:
    """A backend whose generate calls are timed: the model's share of a run's loop."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.seconds = 0.0

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def generate(
        self, requests: Sequence[GenerationRequest], params: GenerationParams
    ) -> Sequence[str | Exception]:
        started = time.perf_counter()
        try:
            return self.inner.generate(requests, params)
        finally:
            self.seconds += time.perf_counter() - started


def bare_generation(
    backend: Backend, n: int, params: GenerationParams | None = None, batch: int = BATCH
) -> float:
    """Wall seconds of the backend's generate calls alone over n demo samples, batch at a time."""
    samples = select_samples(load_dataset("demo"), n).samples
    requests = [GenerationRequest(image_path=s.image_path, prompt=PROMPT) for s in samples]
    params = params or GenerationParams()
    started = time.perf_counter()
    for i in range(0, len(requests), batch):
        backend.generate(requests[i : i + batch], params)
    return time.perf_counter() - started


def one_run(
    backend: Backend,
    n: int,
    folder: Path,
    params: GenerationParams | None = None,
    clock: LoopClock | None = None,
    batch: int = BATCH,
    **settings: Any,
) -> tuple[float, float, float]:
    """(whole, loop, generate) wall seconds of a --metrics none run of n samples.

    settings override the run's defaults (checkpoint_interval=0, cache=False, ...).
    """
    run_settings = RunSettings(
        method="baseline",
        num_samples=n,
        batch_size=batch,
        metrics=parse_metric_list("none"),
        output_dir=folder,
        fresh=True,
        generation=params or GenerationParams(),
        **settings,
    )
    clock = clock or LoopClock()
    timed = TimedBackend(backend)
    started = time.perf_counter()
    run_evaluation(run_settings, backend=timed, reporter=clock)
    return time.perf_counter() - started, clock.last - clock.started, timed.seconds


@dataclass
class Overhead:
    """Repeats of bare, run, run, bare: wall seconds, and each repeat's overhead in percent."""

    bare: list[float] = field(default_factory=list)
    whole: list[float] = field(default_factory=list)
    loop: list[float] = field(default_factory=list)
    pairs: list[float] = field(default_factory=list)
    pairs_whole: list[float] = field(default_factory=list)
    #: each run's loop time outside its generate calls, in percent of its generate time
    outside: list[float] = field(default_factory=list)
    #: each repeat's generate time inside its runs against its bare loops, in percent
    slowed: list[float] = field(default_factory=list)

    def report(self) -> None:
        loop, whole = statistics.median(self.pairs), statistics.median(self.pairs_whole)
        print(f"bare generation: {show(self.bare)}")
        print(f"run, metrics none, loaded backend: whole {show(self.whole)}; "
              f"loop {show(self.loop)}")  # fmt: skip
        print(f"tool overhead of each repeat (bare, run, run, bare): {percents(self.pairs)}")
        print(f"tool overhead (metrics none vs bare generation): loop {loop:.1f}%, "
              f"whole {whole:.1f}%")  # fmt: skip
        print(f"the run's loop outside generate calls (the model's thread waiting for the "
              f"tool), in percent of its generate time: {statistics.median(self.outside):.1f}% "
              f"({percents(self.outside)})")  # fmt: skip
        print(f"generate calls inside the runs vs the bare loops (the tool's other threads "
              f"taking CPU from the model): {statistics.median(self.slowed):.1f}% "
              f"({percents(self.slowed)})")  # fmt: skip


def measure_overhead(
    backend: Backend,
    n: int,
    repeats: int,
    folder: Path,
    params: GenerationParams | None = None,
    batch: int = BATCH,
) -> Overhead:
    """The tool's overhead on this backend: runs against the bare loop, ABBA per repeat."""
    out = Overhead()
    for k in range(repeats):
        os.sync()
        first = bare_generation(backend, n, params, batch)
        runs = [
            one_run(backend, n, folder / f"run{batch}-{k}{j}", params, batch=batch)
            for j in range(2)
        ]
        last = bare_generation(backend, n, params, batch)
        out.bare += [first, last]
        out.whole += [r[0] for r in runs]
        out.loop += [r[1] for r in runs]
        out.outside += [(r[1] / r[2] - 1) * 100 for r in runs]
        out.slowed.append((sum(r[2] for r in runs) / (first + last) - 1) * 100)
        out.pairs.append((sum(r[1] for r in runs) / (first + last) - 1) * 100)
        out.pairs_whole.append((sum(r[0] for r in runs) / (first + last) - 1) * 100)
    return out


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def instant_cpu(n: int, repeats: int, folder: Path) -> list[float]:
    """CPU seconds of each of repeats runs with an instant backend: the tool's work alone."""
    seconds = []
    for k in range(repeats):
        before = cpu_seconds()
        one_run(InstantBackend(), n, folder / f"instant{k}")
        seconds.append(cpu_seconds() - before)
    return seconds


#: Runs whose loop CPU is compared: (what is left out, the flag that does it, its settings).
PARTS: list[tuple[str, str, dict[str, Any]]] = [
    ("nothing", "", {}),
    ("checkpoint exports", "--checkpoint_interval 0", {"checkpoint_interval": 0}),
    ("the generation cache", "--no_cache: each batch finished before the next", {"cache": False}),
    ("both", "", {"checkpoint_interval": 0, "cache": False}),
]


def cpu_by_part(
    n: int, repeats: int, folder: Path, seconds_per_sample: float
) -> dict[str, list[float]]:
    """Loop CPU seconds of runs whose model sleeps, by what they leave out (PARTS alternate)."""
    backend = SleepingBackend(seconds_per_sample)
    spent: dict[str, list[float]] = {left_out: [] for left_out, _, _ in PARTS}
    for k in range(repeats):
        for j, (left_out, _, settings) in enumerate(PARTS):
            clock = LoopClock()
            one_run(backend, n, folder / f"part{k}{j}", clock=clock, **settings)
            spent[left_out].append(clock.cpu)
    return spent


def report_parts(spent: dict[str, list[float]], n: int, seconds_per_sample: float) -> None:
    """The tool's CPU in a run's loop, whole and what its exports and its cache take of it."""

    def shown(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} s ({min(values):.3f}-{max(values):.3f})"

    whole = statistics.median(spent["nothing"])
    print(f"tool CPU in the loop of a run whose model sleeps {seconds_per_sample * 1000:.2f} ms "
          f"a sample (the bare loop's time: a run's schedule, with the CPU left to the tool), "
          f"{n} samples: {shown(spent['nothing'])}, "
          f"{whole / (n * seconds_per_sample) * 100:.1f}% of the model's time")  # fmt: skip
    for left_out, flag, _ in PARTS[1:3]:
        rest = statistics.median(spent[left_out])
        print(
            f"  without {left_out} ({flag}): {shown(spent[left_out])}; {left_out} "
            f"{whole - rest:.3f} s, {(whole - rest) / whole * 100:.0f}% of the tool's CPU"
        )
    print(f"  without both (left: claims, commits, parsing, tallies): {shown(spent['both'])}")


def busy_generation(backend: Backend, n: int) -> float:
    """The bare loop while another process keeps BUSY_SHARE of one core busy."""
    busy = subprocess.Popen([sys.executable, "-c", _BUSY_LOOP])
    try:
        time.sleep(0.2)  # started
        return bare_generation(backend, n)
    finally:
        busy.kill()
        busy.wait()


def cli_run(n: int, metrics: str, folder: Path, extra: Sequence[str] = ()) -> tuple[float, float]:
    """(wall, CPU) seconds of a demo run started from the shell; CPU includes its JVMs.

    extra: more of the command's options (another --backend).
    """
    command = [sys.executable, "-m", "cobra_eval", "--method", "baseline", "--num_samples",
               str(n), "--batch_size", str(BATCH), "--metrics", metrics, "--output_dir",
               str(folder), *extra]  # fmt: skip
    cpu = cpu_seconds(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu


# the CLI's run, then the moment it returned; with thaw, its exit freeze taken back
_TIMED_EXIT = """
import atexit, gc, sys, time
from cobra_eval.cli import main
sys.argv = ["cobra_eval", *sys.argv[2:]]
try:
    main()
finally:
    if sys.argv and {thaw}:
        atexit.unregister(gc.freeze)
    sys.stderr.write("RETURNED %.6f\\n" % time.time())
"""


def exit_seconds(n: int, folder: Path, *, thaw: bool) -> float:
    """Seconds from a demo run's command returning (metrics none) to its process's end."""
    command = [sys.executable, "-c", _TIMED_EXIT.format(thaw=thaw), "cobra_eval", "--method",
               "baseline", "--num_samples", str(n), "--batch_size", str(BATCH), "--metrics",
               "none", "--output_dir", str(folder)]  # fmt: skip
    done = subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)  # fmt: skip
    ended = time.time()
    return ended - float(done.stderr.rsplit("RETURNED ", 1)[1].split()[0])


def scoring_cpu(results_file: Path) -> float:
    """CPU seconds (a fresh process and its JVMs) to score a results file's captions alone."""
    code = f"from benchmarks.run_overhead import score_file; score_file({str(results_file)!r})"
    cpu = cpu_seconds(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True)
    return cpu_seconds(resource.RUSAGE_CHILDREN) - cpu


def score_file(path: str) -> None:
    """Score a results file's captions with every metric, a batch at a time, as a run does."""
    results = json.loads(Path(path).read_text())["results"]
    metrics = parse_metric_list("bleu,meteor,rouge,cider")
    references = {r["image_id"]: r["reference_captions"] for r in results}
    scorer = SampleScorer(references, metrics, prepared=PreparedScoring(metrics, references))
    scores = []
    for i in range(0, len(results), BATCH):
        batch = results[i : i + BATCH]
        scores += scorer.score([(r["image_id"], r["generated_caption"]) for r in batch])
    scorer.corpus(scores)
    scorer.close()


def show(values: list[float], unit: str = "s") -> str:
    return f"{statistics.median(values):.2f} {unit} (min {min(values):.2f}, max {max(values):.2f})"


def percents(values: list[float]) -> str:
    return ", ".join(f"{x:.1f}%" for x in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = args.samples

    backend = create_backend("hf", BackendOptions(model=str(DEMO_MODEL_DIR)))
    bare_generation(backend, BATCH)  # load the weights before timing
    busy = []
    with tempfile.TemporaryDirectory() as tmp:
        overhead = measure_overhead(backend, n, args.repeats, Path(tmp))
        tool_cpu = instant_cpu(n, args.repeats, Path(tmp))
        per_sample = statistics.median(overhead.bare) / n
        parts = cpu_by_part(n, args.repeats, Path(tmp), per_sample)
        for _ in range(max(args.repeats // 2, 1)):
            # bare, busy, busy, bare: as above, a drift cancels
            first = bare_generation(backend, n)
            slowed = busy_generation(backend, n) + busy_generation(backend, n)
            last = bare_generation(backend, n)
            busy.append((slowed / (first + last) - 1) * 100)
        cli: dict[str, list[tuple[float, float]]] = {
            "none": [],
            "bleu,meteor,rouge,cider": [],
            "bleu,rouge,cider": [],
        }
        for k in range(args.repeats):
            os.sync()
            for metrics, times in cli.items():
                times.append(cli_run(n, metrics, Path(tmp) / f"cli{k}{metrics}"))
        captions = next((Path(tmp) / "cli0none").glob("run_*/baseline/results_baseline.json"))
        scoring = scoring_cpu(captions)
        exits: dict[bool, list[float]] = {False: [], True: []}
        for k in range(args.repeats):
            for thaw, seconds in exits.items():
                seconds.append(exit_seconds(EXIT_SAMPLES, Path(tmp) / f"exit{k}{thaw}", thaw=thaw))
    print(f"{n} demo samples at batch {BATCH}, {args.repeats} repeats (median, min-max)")
    overhead.report()
    cpu = statistics.median(tool_cpu)
    print(f"tool CPU of the same run with an instant backend (no model): {show(tool_cpu)}; "
          f"{cpu / statistics.median(overhead.bare) * 100:.1f}% of the bare generation's "
          "time")  # fmt: skip
    report_parts(parts, n, per_sample)
    print(f"bare generation slowed by a process busy {BUSY_SHARE:.0%} of one core: "
          f"{statistics.median(busy):.1f}% ({percents(busy)})")  # fmt: skip
    none_wall = statistics.median(t[0] for t in cli["none"])
    cores = os.cpu_count() or 1
    for metrics, shell in cli.items():
        # each repeat's ratio to the --metrics none run of the same repeat, then the median
        ratios = [r[0] / none[0] for r, none in zip(shell, cli["none"], strict=True)]
        ratio = statistics.median(ratios)
        used = statistics.median(r[1] for r in shell)
        wall = show([r[0] for r in shell])
        print(f"demo run as started from the shell, --metrics {metrics}: {wall}; "
              f"{ratio:.3f}x the --metrics none run; CPU {used:.1f} s (process and JVMs): "
              f"at least {used / cores / none_wall:.2f}x on {cores} cores")  # fmt: skip
    none_cpu = statistics.median(t[1] for t in cli["none"])
    print(f"scoring the none run's captions alone (every metric, batches of {BATCH}): CPU "
          f"{scoring:.1f} s (process and JVMs); with the none run's {none_cpu:.1f} s on {cores} "
          f"cores, every metric takes at least {(none_cpu + scoring) / cores / none_wall:.2f}x "
          "the none run, however it overlaps")  # fmt: skip
    print(f"process exit after a demo run's command returned ({EXIT_SAMPLES} samples): "
          f"{show(exits[False])}; with shutdown's garbage collection (no freeze): "
          f"{show(exits[True])}")  # fmt: skip


if __name__ == "__main__":
    main()
