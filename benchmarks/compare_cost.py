"""Cost of `compare`: a paired bootstrap of every metric on constructed scores.

    python -m benchmarks.compare_cost [--images 5000] [--bootstrap 1000] [--repeats 3]

Two sides with random per-image scores and BLEU counts (the shapes stored runs
have); corpus BLEU is recomputed from pooled counts for every resample.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from cobra_eval.analysis.compare import compare_scores
from cobra_eval.store.scores import StoredScore

KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def sides(n: int) -> tuple[dict[int, StoredScore], dict[int, StoredScore]]:
    rng = np.random.default_rng(0)
    out: list[dict[int, StoredScore]] = [{}, {}]
    for i in range(n):
        for k in (0, 1):
            testlen = int(rng.integers(1, 20))
            guess = [max(testlen - j, 0) for j in range(4)]
            bleu = {"testlen": testlen, "reflen": int(rng.integers(1, 25)), "guess": guess,
                    "correct": [int(rng.integers(0, g + 1)) for g in guess]}  # fmt: skip
            metrics = dict(zip(KEYS, rng.random(7).tolist(), strict=True))
            out[k][i] = StoredScore(metrics, {"bleu": bleu})
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    a, b = sides(args.images)
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        result = compare_scores(a, b, bootstrap=args.bootstrap)
        times.append(time.perf_counter() - started)
    assert [m.n for m in result.metrics] == [args.images] * len(KEYS)
    print(
        f"compare, {args.images} shared images x {args.bootstrap} resamples x {len(KEYS)} "
        f"metrics: median {statistics.median(times):.3f} s "
        f"(min {min(times):.3f}, max {max(times):.3f})"
    )


if __name__ == "__main__":
    main()
