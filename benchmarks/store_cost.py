"""What the results store costs: a per-sample commit, and resume planning at 100k samples.

    python -m benchmarks.store_cost [--commits 500] [--planned 100000] [--done 99000]

1. Per-sample commit on SQLite as the run loop does it (one transaction: the
   result, its pass and its metric rows), WAL, synchronous=NORMAL, on this disk.
2. Resume planning for a run with --planned samples of which --done have
   results: the pending-ids query, and a worker's claim of its first batch.
3. A checkpoint export (read from the database, serialise, write, fsync, rename)
   of 1,000 and 10,000 results: the growth with N.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

from cobra_eval.store import Store, resolve_url
from cobra_eval.store.checkpoint_io import ResultRecord
from cobra_eval.store.claims import claim_batch
from cobra_eval.store.models import utcnow
from cobra_eval.store.repository import RESULT

CONFIG = {"model": {"name": "bench"}, "generation": {}, "dataset": {"identity": "bench"}}


def record(image_id: int) -> ResultRecord:
    metrics = {"Bleu_1": 0.5, "Bleu_2": 0.4, "Bleu_3": 0.3, "Bleu_4": 0.2, "METEOR": 0.25,
               "ROUGE_L": 0.5, "CIDEr": 0.9}  # fmt: skip
    caption = "a red circle to the left of a blue square"
    return ResultRecord(
        image_id=image_id,
        reference_captions=[caption] * 5,
        generated_caption=caption,
        reasoning_trace="",
        metadata={"parse_status": "ok", "cached": False, "passes": [
            {"name": "caption", "prompt": "Describe the image.", "raw_output": caption,
             "caption": caption, "reasoning": "", "parse_status": "ok", "metrics": metrics}]},
        metrics=metrics,
    )  # fmt: skip


def commit_cost(folder: Path, n: int) -> list[float]:
    with Store.open(resolve_url(str(folder / "commit.db"))) as store:
        store.create_run("r", CONFIG, "f")
        store.ensure_plan("r", list(range(n)))
        times = []
        for i in range(n):
            started = time.perf_counter()
            store.commit_result("r", "baseline", record(i), worker="bench:1", latency_s=0.0)
            times.append((time.perf_counter() - started) * 1000)
    return times


def planning_cost(folder: Path, planned: int, done: int, repeats: int) -> tuple[list, list]:
    with Store.open(resolve_url(str(folder / "plan.db"))) as store:
        store.create_run("r", CONFIG, "f")
        store.ensure_plan("r", list(range(planned)))
        now = utcnow()
        rows = [{"run_id": "r", "method": "baseline", "image_id": i, "status": "ok",
                 "reference_captions": [], "generated_caption": "x", "reasoning_trace": "",
                 "metadata": {}, "metrics": {}, "worker": "bench:1", "created_at": now}
                for i in range(done)]  # fmt: skip
        with store.engine.begin() as conn:
            conn.execute(insert(RESULT), rows)
        pending_ms, claim_ms = [], []
        for k in range(repeats):
            started = time.perf_counter()
            left = store.pending("r", "baseline", planned)
            pending_ms.append((time.perf_counter() - started) * 1000)
            assert len(left) == planned - done
            started = time.perf_counter()
            got = claim_batch(store, "r", "baseline", f"bench:{k}", limit=8, total=planned,
                              lease_s=60, retry_failed_before=now)  # fmt: skip
            claim_ms.append((time.perf_counter() - started) * 1000)
            assert len(got) == 8
    return pending_ms, claim_ms


def export_cost(folder: Path, n: int, repeats: int) -> list[float]:
    from cobra_eval.store.snapshots import export_snapshot

    with Store.open(resolve_url(str(folder / f"export{n}.db"))) as store:
        store.create_run("r", CONFIG, "f")
        store.ensure_plan("r", list(range(n)))
        store.ensure_method("r", "baseline", config={"name": "baseline"}, fingerprint="m",
                            settings={}, total=n)  # fmt: skip
        now = utcnow()
        one = record(0)
        rows = [{"run_id": "r", "method": "baseline", "image_id": i, "status": "ok",
                 "reference_captions": one.reference_captions,
                 "generated_caption": one.generated_caption, "reasoning_trace": "",
                 "metadata": one.metadata, "metrics": one.metrics, "worker": "bench:1",
                 "created_at": now} for i in range(n)]  # fmt: skip
        with store.engine.begin() as conn:
            conn.execute(insert(RESULT), rows)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            export_snapshot(store, folder / "out", "r", "baseline", is_checkpoint=True)
            times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commits", type=int, default=500)
    parser.add_argument("--planned", type=int, default=100_000)
    parser.add_argument("--done", type=int, default=99_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp)
        commits = commit_cost(folder, args.commits)
        pending, claims = planning_cost(folder, args.planned, args.done, args.repeats)
        exports = {n: export_cost(folder, n, args.repeats) for n in (1_000, 10_000)}

    def show(values: list[float]) -> str:
        return f"median {statistics.median(values):.2f} ms (min {min(values):.2f}, " \
               f"max {max(values):.2f})"  # fmt: skip

    print(f"per-sample commit (result + 1 pass + 14 metric rows), SQLite, {args.commits} "
          f"commits: {show(commits)}")  # fmt: skip
    print(f"resume planning, {args.planned} planned / {args.done} done: pending ids "
          f"{show(pending)}; claim of the first batch {show(claims)}")  # fmt: skip
    for n, times in exports.items():
        print(f"checkpoint export of {n} results: {show(times)}")


if __name__ == "__main__":
    main()
