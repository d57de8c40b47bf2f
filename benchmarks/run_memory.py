"""Resident memory of a 100,000-sample run beyond the model, and where its time goes.

    python -m benchmarks.run_memory [--samples 100000] [--metrics bleu,rouge,cider] [--format coco]

A dataset of N images (symbolic links to one small PNG, five references each; a
COCO captions file, or with --format jsonl a captions JSONL) is run end to end
through ``run_evaluation`` with an instant in-process backend, so everything
measured is the tool's: reading the dataset, planning, claims, the generation
cache, commits, checkpoint snapshots (default interval 10, thinned as the run
grows), the final results file, and by default per-sample BLEU, ROUGE-L and
CIDEr-D (METEOR's memory is its own JVM's). Reported: peak resident memory
(VmHWM) minus the resident memory before the run, the run's wall time, and the
snapshots it wrote; and, apart, the peak resident memory of each process the run
started (the tokenizer's JVM, and METEOR's when it is on), read from /proc while
they live: ``getrusage(RUSAGE_CHILDREN)`` is no measure of a JVM's, because a
child started with vfork() is charged the parent's peak when it execs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cobra_eval.backends import GenerationRequest
from cobra_eval.config import GenerationParams, RunSettings
from cobra_eval.metrics import parse_metric_list
from cobra_eval.runner import run_evaluation

CAPTIONS = ["a red circle above a blue square", "a blue square below a red circle",
            "two shapes on a white background", "a circle and a square",
            "a red shape over a blue one"]  # fmt: skip


class InstantBackend:
    """Answers at once: what remains of a run's time and memory is the tool's."""

    def identity(self) -> dict[str, Any]:
        return {"name": "instant", "revision": "1"}

    def generate(self, requests: Sequence[GenerationRequest], params: GenerationParams) -> list:
        return [f"a red circle above a blue square, {r.image_path.stem}" for r in requests]


def status_kib(field: str, pid: int | str = "self") -> int:
    """A field of a running process's /proc status (VmRSS, VmHWM: the peak), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


class ChildPeaks:
    """Peak resident memory of each process this one starts, polled from /proc meanwhile."""

    def __init__(self, every_s: float = 0.05):
        self.every_s = every_s
        #: pid -> (command, peak KiB)
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> ChildPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        me = str(os.getpid())
        while not self._stop.wait(self.every_s):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    # the command (in parentheses) may hold spaces: ppid follows its ")"
                    if stat.rsplit(")", 1)[1].split()[1] != me:
                        continue
                    status = Path(f"/proc/{pid}/status").read_text()
                    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except (OSError, IndexError):
                    continue  # ended meanwhile
                peak = next((int(line.split()[1]) for line in status.splitlines()
                             if line.startswith("VmHWM:")), 0)  # fmt: skip
                name = " ".join(c.decode(errors="replace") for c in command if c)
                # an exited child not yet waited for has no command line left
                known, high = self.peaks.get(int(pid), ("", 0))
                self.peaks[int(pid)] = (name or known, max(peak, high))

    def largest(self) -> tuple[str, int] | None:
        """(command, peak KiB) of the child with the highest peak, if any was seen."""
        return max(self.peaks.values(), key=lambda item: item[1], default=None)


def make_dataset(folder: Path, n: int, form: str = "coco") -> Path:
    """N images (links to one PNG) with five references each, as a COCO captions file or
    a captions JSONL; written an entry at a time, so that this process holds none of it."""
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (8, 8), "white").save(folder / "one.png")
    for i in range(n):
        (images / f"{i}.png").symlink_to(folder / "one.png")
    if form == "jsonl":
        with (folder / "captions.jsonl").open("w") as out:
            for i in range(n):
                out.write(json.dumps({"file_name": f"{i}.png", "captions": CAPTIONS}) + "\n")
        return folder / "captions.jsonl"
    # the fields a real COCO captions file has, in its member order
    with (folder / "captions.json").open("w") as out:
        out.write('{"info": {"description": "COCO-shaped"}, "licenses": [], "images": [')
        for i in range(n):
            image = {
                "license": 3,
                "file_name": f"{i}.png",
                "coco_url": f"http://x/{i}.png",
                "height": 8,
                "width": 8,
                "date_captured": "2013-11-14 16:28:13",
                "id": i,
            }
            out.write(("," if i else "") + json.dumps(image))
        out.write('], "annotations": [')
        for i in range(n):
            for k, caption in enumerate(CAPTIONS):
                sep = "," if i or k else ""
                out.write(sep + json.dumps({"image_id": i, "id": 5 * i + k, "caption": caption}))
        out.write("]}")
    return folder / "captions.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--metrics", default="bleu,rouge,cider")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--format", choices=("coco", "jsonl"), default="coco",
                        help="the dataset file: COCO captions JSON or captions JSONL")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp) / "data", args.samples, args.format)
        settings = RunSettings(
            method="baseline",
            num_samples=args.samples,
            batch_size=args.batch_size,
            metrics=parse_metric_list(args.metrics),
            dataset=str(dataset),
            images=Path(tmp) / "data" / "images",
            output_dir=Path(tmp) / "out",
        )
        before = status_kib("VmRSS")
        started = time.perf_counter()
        with ChildPeaks() as children:
            summary = run_evaluation(settings, backend=InstantBackend())
        wall = time.perf_counter() - started
        peak = status_kib("VmHWM")
        method = summary.methods[0]
        final = method.final_file
        size = final.stat().st_size if final else 0
        print(f"{args.samples} samples ({args.format} file), metrics {args.metrics}, "
              f"batch {args.batch_size}")  # fmt: skip
        print(f"run wall time: {wall:.1f} s ({wall / args.samples * 1000:.2f} ms/sample)")
        print(
            f"resident memory: {before / 1024:.0f} MiB before the run, peak {peak / 1024:.0f} MiB"
            f" -> {(peak - before) / 1024:.0f} MiB for the run"
        )
        print(
            f"checkpoint snapshots written: {len(method.checkpoints)}; "
            f"final file {size / 1e6:.0f} MB"
        )
        largest = children.largest()
        if largest is not None:
            command, child = largest
            what = ("the tokenizer's JVM" if "PtbServer" in command
                    else "METEOR's JVM" if "meteor" in command else command or "?")  # fmt: skip
            print(f"largest process the run started ({what}), apart: peak {child / 1024:.0f} MiB;"
                  f" with the run's, {(peak - before + child) / 1024:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
