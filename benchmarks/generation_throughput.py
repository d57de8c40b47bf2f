"""Demo model throughput: samples/second at batch 1 and batch 16, and batched == one-at-a-time.

    python -m benchmarks.generation_throughput [--samples 64] [--repeats 3]

Prints a Markdown table row per batch size (median, min-max of the repeats).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

from cobra_eval.backends import BackendOptions, GenerationRequest, create_backend
from cobra_eval.config import GenerationParams
from cobra_eval.datasets import load_dataset, select_samples
from cobra_eval.demo import DEMO_MODEL_DIR
from cobra_eval.methods.baseline import PROMPT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_sizes", default="1,16")
    args = parser.parse_args()

    backend = create_backend("hf", BackendOptions(model=str(DEMO_MODEL_DIR)))
    samples = select_samples(load_dataset("demo"), args.samples).samples
    requests = [GenerationRequest(image_path=s.image_path, prompt=PROMPT) for s in samples]
    params = GenerationParams(max_new_tokens=32)
    backend.generate(requests[:2], params)  # load weights before timing

    outputs: dict[int, list[str | Exception]] = {}
    medians: dict[int, float] = {}
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; date: {date.today()}")
    print("| batch size | samples/s (median) | min-max | samples |")
    print("|---|---|---|---|")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        rates = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            texts: list[str | Exception] = []
            for i in range(0, len(requests), batch):
                texts += backend.generate(requests[i : i + batch], params)
            rates.append(len(requests) / (time.perf_counter() - started))
            outputs[batch] = texts
        medians[batch] = statistics.median(rates)
        print(
            f"| {batch} | {statistics.median(rates):.1f} | {min(rates):.1f}-{max(rates):.1f} "
            f"| {len(requests)} |"
        )
    if 1 in medians and 16 in medians:
        print(f"batch 16 / batch 1: {medians[16] / medians[1]:.2f}x")
    first = next(iter(outputs.values()))
    same = all(texts == first for texts in outputs.values())
    print(f"batched captions identical to batch-1 captions: {same}")


if __name__ == "__main__":
    main()
