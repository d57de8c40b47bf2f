"""What the results store costs: commits, resume planning, checkpoint export and import.

    python -m benchmarks.store_cost [--commits 500] [--repeats 5] [--sizes 1000,10000,100000]

1. Per-sample commit on SQLite as the run loop does it (one transaction: the
   result, its pass and its metric rows), WAL, synchronous=NORMAL, on this disk.
2. Resume planning for runs of each size with 99% done: the first claim of a resumed
   run (how it finds its pending ids: after its settled samples), and a claim that
   looks from the plan's start (a run's tail does it once; growth with N).
3. A checkpoint export (read from the database, serialise, write, fsync, rename,
   the `latest` link) at each size, the growth with N, and the resident memory
   one export adds to a fresh process (peak RSS above the RSS before it, Linux).
   Each timed export and import starts after os.sync(): its fsync must not pay
   for writing back the megabytes the benchmark's setup left dirty. Then the
   export a run makes: of n results, just after its own export of n - 10 (that
   file's results are copied, the 10 new ones serialised).
4. Importing a 10,000-result checkpoint as --load_results does (read, validate,
   insert in one transaction) into a fresh database.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

from cobra_eval.store import Store, resolve_url
from cobra_eval.store.checkpoint_io import ResultRecord, read_checkpoint
from cobra_eval.store.claims import ClaimCursor, claim_batch
from cobra_eval.store.models import utcnow
from cobra_eval.store.repository import RESULT
from cobra_eval.store.snapshots import export_snapshot, import_document

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


def batch_commit_cost(folder: Path, n: int, batch: int) -> list[float]:
    """Per-sample time of a batch commit, as the run loop does it (one transaction a batch)."""
    from cobra_eval.store.repository import CommitItem

    with Store.open(resolve_url(str(folder / f"batch{batch}.db"))) as store:
        store.create_run("r", CONFIG, "f")
        store.ensure_plan("r", list(range(n)))
        times = []
        for start in range(0, n, batch):
            items = [CommitItem(record(i), 0.0) for i in range(start, min(start + batch, n))]
            started = time.perf_counter()
            store.commit_results("r", "baseline", items, worker="bench:1")
            times.append((time.perf_counter() - started) * 1000 / len(items))
    return times


def planning_cost(folder: Path, planned: int, repeats: int) -> tuple[list[float], list[float]]:
    """A resumed run's first claim (its pending ids), and a claim that looks from the plan's start.

    The first is what a run resumed with `done` samples settled does before its first
    generate: it looks after them (runner's ClaimCursor). The second is what a run's
    last claims do once when only earlier holes are left (failures to retry).
    """
    done = planned - max(planned // 100, 16 * repeats)  # each repeat claims 16 more
    with Store.open(resolve_url(str(folder / f"plan{planned}.db"))) as store:
        store.create_run("r", CONFIG, "f")
        store.ensure_plan("r", list(range(planned)))
        now = utcnow()
        rows = [{"run_id": "r", "method": "baseline", "image_id": i, "status": "ok",
                 "reference_captions": [], "generated_caption": "x", "reasoning_trace": "",
                 "metadata": {}, "metrics": {}, "worker": "bench:1", "created_at": now}
                for i in range(done)]  # fmt: skip
        with store.engine.begin() as conn:
            conn.execute(insert(RESULT), rows)
        resumed_ms: list[float] = []
        from_start_ms: list[float] = []
        for k in range(repeats):
            resumed = ClaimCursor(position=done - 1)  # as runner starts it
            for cursor, times in ((resumed, resumed_ms), (None, from_start_ms)):
                started = time.perf_counter()
                got = claim_batch(store, "r", "baseline", f"bench:{k}:{len(times)}", limit=8,
                                  total=planned, lease_s=60, retry_failed_before=now,
                                  cursor=cursor)  # fmt: skip
                times.append((time.perf_counter() - started) * 1000)
                assert len(got) == 8 and min(got) >= done
    return resumed_ms, from_start_ms


def filled_store(path: Path, n: int, stored: int | None = None) -> Store:
    """A run of n planned samples, the first `stored` (all) with results (bulk-inserted)."""
    store = Store.open(resolve_url(str(path)))
    store.create_run("r", CONFIG, "f")
    store.ensure_plan("r", list(range(n)))
    store.ensure_method("r", "baseline", config={"name": "baseline"}, fingerprint="m",
                        settings={}, total=n)  # fmt: skip
    add_results(store, range(n if stored is None else stored))
    return store


def add_results(store: Store, ids: range) -> None:
    now = utcnow()
    one = record(0)
    for start in range(ids.start, ids.stop, 10_000):
        chunk = range(start, min(ids.stop, start + 10_000))
        rows = [{"run_id": "r", "method": "baseline", "image_id": i, "status": "ok",
                 "reference_captions": one.reference_captions,
                 "generated_caption": one.generated_caption, "reasoning_trace": "",
                 "metadata": one.metadata, "metrics": one.metrics, "worker": "bench:1",
                 "created_at": now} for i in chunk]  # fmt: skip
        with store.engine.begin() as conn:
            conn.execute(insert(RESULT), rows)


def next_checkpoint_cost(folder: Path, n: int, repeats: int, step: int = 10) -> list[float]:
    """A run's case: exports of n results, each after one of n - step written by this process.

    The earlier file's results are copied, the `step` new ones serialised.
    """
    with filled_store(folder / f"next{n}.db", n, n - step * repeats) as store:
        out = folder / f"next{n}"
        earlier = export_snapshot(store, out, "r", "baseline", is_checkpoint=True).items
        times = []
        for k in range(repeats, 0, -1):
            add_results(store, range(n - step * k, n - step * (k - 1)))
            os.sync()
            started = time.perf_counter()
            done = export_snapshot(store, out, "r", "baseline", is_checkpoint=True, earlier=earlier)
            times.append((time.perf_counter() - started) * 1000)
            assert done.reused == n - step * k and done.count == n - step * (k - 1)
            earlier = done.items
    return times


def rss_kib(field: str) -> int | None:
    """VmRSS / VmHWM (peak) of this process (Linux), KiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def export_cost(folder: Path, n: int, repeats: int) -> tuple[list[float], float | None]:
    """Export times, and the MiB an export adds to a fresh process at its peak."""
    db = folder / f"export{n}.db"
    with filled_store(db, n) as store:
        times = []
        for _ in range(repeats):
            # the export's fsync must not pay for writing back what the setup left dirty
            os.sync()
            started = time.perf_counter()
            export_snapshot(store, folder / "out", "r", "baseline", is_checkpoint=True)
            times.append((time.perf_counter() - started) * 1000)
    # in a fresh process: this one's heap still holds what filling the database allocated
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.store_cost", "--export_rss", str(db)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    extra = child.stdout.strip()
    return times, float(extra) if extra else None


def export_rss(db: Path) -> None:
    """Print the MiB one export adds to this process's resident memory at its peak."""
    with Store.open(resolve_url(str(db))) as store:
        store.method_progress("r", "baseline")  # connections, caches: not the export's
        before = rss_kib("VmRSS")
        export_snapshot(store, db.parent / "rss", "r", "baseline", is_checkpoint=True)
        peak = rss_kib("VmHWM")
    if before is not None and peak is not None:
        print(f"{(peak - before) / 1024:.1f}")


def import_cost(folder: Path, source: Path, repeats: int) -> list[float]:
    times = []
    for k in range(repeats):
        with Store.open(resolve_url(str(folder / f"import{k}.db"))) as store:
            os.sync()
            started = time.perf_counter()
            doc = read_checkpoint(source)
            summary = import_document(store, doc, source=str(source))
            times.append((time.perf_counter() - started) * 1000)
            assert summary.imported == len(doc.results)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commits", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="1000,10000,100000", help="Result counts to export.")
    parser.add_argument("--import_size", type=int, default=10_000)
    parser.add_argument("--export_rss", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_rss:
        export_rss(args.export_rss)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp)
        commits = commit_cost(folder, args.commits)
        batched = batch_commit_cost(folder, args.commits * 4, 16)
        planning = {n: planning_cost(folder, n, args.repeats) for n in sizes}
        exports = {}
        for n in sizes:
            # the largest size fewer times: each export of 100k is a whole-run copy
            exports[n] = export_cost(folder, n, args.repeats if n <= 10_000 else 3)
        following = {n: next_checkpoint_cost(folder, n, args.repeats) for n in sizes}
        with filled_store(folder / "source.db", args.import_size) as store:
            source = export_snapshot(store, folder / "src", "r", "baseline", is_checkpoint=True)
        imports = import_cost(folder, source.path, args.repeats)

    def show(values: list[float]) -> str:
        return f"median {statistics.median(values):.2f} ms (min {min(values):.2f}, " \
               f"max {max(values):.2f})"  # fmt: skip

    print(f"per-sample commit (result + 1 pass + 14 metric rows), SQLite, {args.commits} "
          f"commits: {show(commits)}")  # fmt: skip
    print(f"the same in batches of 16 (one transaction a batch, as a run commits), per sample: "
          f"{show(batched)}")  # fmt: skip
    for n, (resumed, from_start) in planning.items():
        done = n - max(n // 100, 16 * args.repeats)
        print(f"resume planning, {n} planned / {done} done: a resumed run's first claim "
              f"{show(resumed)}; a claim looking from the plan's start "
              f"{show(from_start)}")  # fmt: skip
    previous = None
    for n, (times, extra) in exports.items():
        median = statistics.median(times)
        growth = f"; x{median / previous[1]:.1f} for x{n / previous[0]:g} results" \
            if previous else ""  # fmt: skip
        memory = f"; a fresh process's peak RSS +{extra:.1f} MiB" if extra is not None else ""
        print(f"checkpoint export of {n} results: {show(times)}, "
              f"{median * 1000 / n:.1f} us/result{growth}{memory}")  # fmt: skip
        previous = (n, median)
    for n, times in following.items():
        print(f"checkpoint export of {n} results after one of {n - 10} (as a run exports: "
              f"the earlier file's results copied, 10 serialised): {show(times)}")  # fmt: skip
    print(f"import of a {args.import_size}-result checkpoint (read, validate, insert): "
          f"{show(imports)}")  # fmt: skip


if __name__ == "__main__":
    main()
