"""A resumed 100,000-sample run: the time from its start to its first generate, and its parts.

    python -m benchmarks.resume_cost [--samples 100000] [--done 99000] [--metrics none]

A run of `done` samples (the dataset of run_memory: links to one small PNG, five
references each; an instant in-process backend) is made once; then the same
command resumes it to `samples` (--resume_from_checkpoint), timed from its call
to its first generate. Its steps are timed as they run: the dataset's reading and
the selection's image checks (a fresh run of the same dataset does both too), and
what the resume itself adds: the plan checked against the selection, the counts,
the stored scores read back, the failed samples, and its first claim (the query
that finds its pending ids). The claim that looks from the plan's start, which a
run's last claims make once, is reported apart: it comes after the first generate.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.run_memory import InstantBackend, make_dataset
from cobra_eval import method_scores, runner
from cobra_eval.backends import GenerationRequest
from cobra_eval.config import GenerationParams, RunSettings
from cobra_eval.metrics import parse_metric_list
from cobra_eval.progress import SilentReporter
from cobra_eval.store.repository import Store

#: (where, attribute, what it is in a run, whether every run does it): the steps timed, in
#: the order a resume runs them.
STEPS: list[tuple[Any, str, str, bool]] = [
    (runner, "load_dataset", "reading the dataset", True),
    (runner, "select_samples", "the selection's image checks", True),
    (Store, "ensure_plan", "the plan checked against the selection", False),
    (Store, "run_methods", "the run's methods (their configs checked)", False),
    (Store, "planned_beyond", "whether the plan holds more than the selection", False),
    (Store, "count_results", "the samples done", False),
    (method_scores.MethodScores, "load", "stored scores read back", False),
    (Store, "failed_ids", "the failed samples (retried)", False),
]


class FirstCall(InstantBackend):
    """The instant backend, noting when it was first asked."""

    def __init__(self) -> None:
        self.first: float | None = None

    def generate(self, requests: Sequence[GenerationRequest], params: GenerationParams) -> list:
        if self.first is None:
            self.first = time.perf_counter()
        return super().generate(requests, params)


class Timer:
    """Wall seconds of each call of each wrapped callable, in order (or those before `until`).

    until: a function telling when calls stop counting (the first generate: the end
    of a method counts and reads progress again, and those calls are not the resume's).
    """

    def __init__(self, until: Callable[[], bool] = lambda: False) -> None:
        self.calls: dict[str, list[float]] = collections.defaultdict(list)
        self.until = until

    def total(self, name: str) -> float:
        return sum(self.calls[name])

    def wrap(self, owner: Any, name: str) -> None:
        inner: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.until():
                return inner(*args, **kwargs)
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.calls[name].append(time.perf_counter() - started)

        setattr(owner, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--done", type=int, default=99_000)
    parser.add_argument("--metrics", default="none")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp) / "data", args.samples)

        def settings(n: int, **more: Any) -> RunSettings:
            return RunSettings(method="baseline", num_samples=n, batch_size=16,
                               metrics=parse_metric_list(args.metrics), dataset=str(dataset),
                               images=Path(tmp) / "data" / "images",
                               output_dir=Path(tmp) / "out", **more)  # fmt: skip

        runner.run_evaluation(settings(args.done), backend=InstantBackend(),
                              reporter=SilentReporter())  # fmt: skip
        backend = FirstCall()
        # the steps before the first generate: the end of the method reads counts again
        timer = Timer(until=lambda: backend.first is not None)
        for owner, name, _, _ in STEPS:
            timer.wrap(owner, name)
        claims = Timer()
        claims.wrap(runner, "claim_batch")
        started = time.perf_counter()
        runner.run_evaluation(settings(args.samples, resume_from_checkpoint=True),
                              backend=backend, reporter=SilentReporter())  # fmt: skip
    assert backend.first is not None
    first = (backend.first - started) * 1000
    claimed = claims.calls["claim_batch"]
    every_run = sum(timer.total(name) for _, name, _, every in STEPS if every)
    print(f"{args.samples} planned / {args.done} done (metrics {args.metrics}), resumed: "
          f"first generate after {first:.0f} ms; without reading the dataset and checking "
          f"its images (a fresh run does both): {first - every_run * 1000:.0f} ms")  # fmt: skip
    for _, name, what, every in STEPS:
        print(f"  {what}{' (every run)' if every else ''}: {timer.total(name) * 1000:.1f} ms")
    print(f"  the first claim (its pending ids): {claimed[0] * 1000:.1f} ms")
    listed = sum(timer.total(name) for _, name, _, every in STEPS if not every) + claimed[0]
    print(f"  the rest (opening the database, the run's and method's rows, the first batch's "
          f"lookups): {first - every_run * 1000 - listed * 1000:.1f} ms")  # fmt: skip
    print(f"after the first generate, the longest claim (looking from the plan's start): "
          f"{max(claimed) * 1000:.1f} ms; {len(claimed)} claims in all")  # fmt: skip


if __name__ == "__main__":
    main()
