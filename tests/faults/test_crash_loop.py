"""SIGKILL the real demo model again and again; the resumed run ends as if never killed.

The bundled demo model (a tiny LLaVA, real transformers generation on CPU) captions
demo images in a real process, scored with BLEU and CIDEr as each sample lands, into
the real SQLite file. A seeded schedule kills it (200 baseline samples, 15 times; 40
scratchpad_compare samples, 5 times), resuming each time with
--resume_from_checkpoint: from outside at random moments (timed from an
uninterrupted run of the same config: some while the model loads, the rest anywhere
in generating, scoring, committing and exporting), once inside a checkpoint export
and once inside a database commit (tests/kill_points.py). After every kill nothing
reported is lost, nothing is doubled and every checkpoint file is whole; the last
resume finishes, and the rows, captions, reasoning, per-sample and corpus metrics
equal the uninterrupted run's.
"""

from __future__ import annotations

import itertools
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from cobra_eval.store.checkpoint_schedule import scheduled_count
from tests.conftest import REPO, World, subprocess_env
from tests.test_kill_resume import (
    NUMBERED_RE,
    PASSES,
    PROCESSED_RE,
    UNBUFFERED,
    check_recorded,
    temp_files,
    without_cache_marks,
)

RUN_ID = "crash"
INTERVAL, BATCH = 10, 8
#: hits of the export kill point per checkpoint (the numbered file's rename, then latest's)
EXPORT_HITS = 2
#: seconds any one process may take (an uninterrupted run takes well under a minute)
PROCESS_TIMEOUT = 600
METRICS = {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"}
#: columns of `export --format jsonl` that are not metrics
ROW_COLUMNS = {
    "run_id", "method", "image_id", "position", "status", "error", "generated_caption",
    "reasoning_trace", "reference_captions", "parse_status", "cached", "worker", "latency_s",
    "created_at",
}  # fmt: skip


@dataclass(frozen=True)
class Crash:
    """A crash loop: the demo run to kill, how often, and the seed of its schedule."""

    method: str
    total: int
    kills: int
    #: kills while the process loads (before its first sample, if it loads as fast as measured)
    early: int
    seed: int

    def args(self, out: Path) -> list[str]:
        """The run command's arguments (the resumes add --resume_from_checkpoint)."""
        return [
            "--backend", "hf", "--model", "demo", "--dataset", "demo", "--method", self.method,
            "--num_samples", str(self.total), "--checkpoint_interval", str(INTERVAL),
            "--batch_size", str(BATCH), "--metrics", "bleu,cider",
            "--output_dir", str(out), "--run_id", RUN_ID,
        ]  # fmt: skip


@dataclass(frozen=True)
class Kill:
    """One planned death of a process, resumed the next time round.

    At the n-th hit of a kill point (inside it, by tests/kill_points.py); else from
    outside: SIGKILL `delay` seconds after the process printed `after` new
    `Processed i/N` lines, or, with `after` 0, `delay` seconds after its start.
    """

    point: str | None = None
    n: int = 0
    after: int = 0
    delay: float = 0.0

    def command(self, args: list[str]) -> list[str]:
        if self.point is None:
            return [sys.executable, "-m", "cobra_eval", *args]
        return [sys.executable, "-m", "tests.kill_points", self.point, str(self.n), "--", *args]

    def __str__(self) -> str:
        if self.point is not None:
            return f"{self.point} #{self.n}"
        return f"{self.delay:.2f}s after " + (f"{self.after} new" if self.after else "start")


def plan_kills(crash: Crash, startup: float, batch: float) -> list[Kill]:
    """One kill inside an export, one inside a commit, `early` while loading, the rest mid-run.

    Timed from an uninterrupted run: seconds to its first sample, and per batch. A
    mid-run kill waits for 1 to BATCH - 1 new samples, then up to one batch's time,
    so its moment in the cycle of generating, scoring, committing and exporting is
    random (run_process fires it at the next batch's samples if they come sooner).
    Samples land a batch at a time, so a kill costs the run one or two batches: the
    last kill still finds the run unfinished.
    """
    rng = random.Random(crash.seed)
    export_at, commit_at = rng.sample(range(1, min(crash.kills, 8)), 2)
    others = [i for i in range(crash.kills) if i not in (export_at, commit_at)]
    early = set(rng.sample(others, crash.early))
    kills = []
    for i in range(crash.kills):
        if i == export_at:
            # the first checkpoint's two hits, or the next one's first
            kills.append(Kill("export", rng.randint(1, EXPORT_HITS + 1)))
        elif i == commit_at:
            # a batch is one transaction (split where a checkpoint falls due): die inside the
            # second batch's, after the first is committed
            kills.append(Kill("commit", rng.randint(BATCH + 1, 2 * BATCH)))
        elif i in early:
            kills.append(Kill(delay=rng.uniform(0.1, 0.7) * startup))
        else:
            kills.append(Kill(after=rng.randint(1, BATCH - 1), delay=rng.uniform(0, batch)))
    return kills


@dataclass
class Finished:
    """A process that ran to its end (or its death)."""

    returncode: int
    stdout: str
    stderr: str
    #: seconds from the start to each `Processed i/N` line it printed
    sample_times: list[float]
    total_s: float


def run_process(
    command: list[str], env: dict[str, str], log: Path, kill: Kill | None = None
) -> Finished:
    """Run a command to its end, or to the SIGKILL `kill` plans; note when samples landed.

    A mid-run kill fires `delay` seconds after the `after`-th new sample, or at the
    next batch's samples if they come sooner: each kill costs the run at most about
    two batches, however fast this machine runs at the moment.
    """
    started = time.monotonic()
    times: list[float] = []
    lines: list[str] = []
    after = kill.after if kill is not None else 0
    ready = threading.Event()  # `after` samples are in (or the process ended)
    next_batch = threading.Event()  # `after + BATCH` samples are in (or the process ended)
    with log.open("w") as errors:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env, cwd=REPO
        )

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if PROCESSED_RE.search(line):
                    times.append(time.monotonic() - started)
                    if len(times) == after:
                        ready.set()
                    if len(times) == after + BATCH:
                        next_batch.set()
            ready.set()
            next_batch.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        if kill is not None and kill.point is None:
            if kill.after:
                ready.wait(timeout=PROCESS_TIMEOUT)
                next_batch.wait(timeout=kill.delay)
            else:
                time.sleep(kill.delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        try:
            proc.wait(timeout=PROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"still running after {PROCESS_TIMEOUT}s: {command}")
        reader.join(timeout=PROCESS_TIMEOUT)
    total = time.monotonic() - started
    return Finished(proc.returncode, "".join(lines), log.read_text(), times, total)


def committed(world: World, method: str) -> dict[int, str]:
    """Committed captions by image id (none before the database exists).

    Nothing is doubled, and a committed sample is whole: all of its method's passes.
    """
    if not world.has_table("sample_result"):
        return {}
    dupes = world.rows(
        "SELECT run_id, method, image_id, COUNT(*) FROM sample_result "
        "GROUP BY run_id, method, image_id HAVING COUNT(*) > 1"
    )
    assert dupes == [], f"duplicate results: {dupes}"
    passes = world.rows(
        "SELECT r.image_id, COUNT(p.id) FROM sample_result r "
        "LEFT JOIN sample_pass p ON p.result_id = r.id GROUP BY r.id"
    )
    partial = [(image_id, n) for image_id, n in passes if n != PASSES[method]]
    assert partial == [], f"results without all their passes: {partial}"
    found = world.rows(
        "SELECT image_id, generated_caption FROM sample_result WHERE run_id = ? AND method = ?",
        RUN_ID,
        method,
    )
    return dict(found)


def recorded_count(world: World, method: str) -> int:
    """The count of the newest periodic checkpoint recorded in the database (0 if none)."""
    if not world.has_table("checkpoint"):
        return 0
    found = world.rows(
        "SELECT COALESCE(MAX(count), 0) FROM checkpoint "
        "WHERE run_id = ? AND method = ? AND NOT is_final",
        RUN_ID,
        method,
    )
    return int(found[0][0])


def check_checkpoint_files(
    world: World, crash: Crash, captions: dict[int, str]
) -> list[tuple[str, int]]:
    """Every checkpoint_*.json under the output folder is whole and consistent.

    Counts agree within a file and with its name, its results are the first planned
    samples with their committed captions, and a newer file never holds fewer
    results. Returns (timestamp, count) of each file, oldest first.
    """
    plan: list[int] = []
    if world.has_table("planned_sample"):
        found = world.rows(
            "SELECT image_id FROM planned_sample WHERE run_id = ? ORDER BY position", RUN_ID
        )
        plan = [image_id for (image_id,) in found]
    written = []
    for path in sorted(world.out.rglob("checkpoint_*.json")):
        doc = json.loads(path.read_bytes())  # a torn or truncated file fails here
        meta, info, results = doc["meta"], doc["checkpoint_info"], doc["results"]
        count = info["processed_count"]
        assert count == len(results) == meta["samples_processed"], path.name
        assert meta["total_samples"] == crash.total, path.name
        assert info["remaining_count"] == crash.total - count, path.name
        assert meta["is_checkpoint"] is True, path.name
        ids = [r["image_id"] for r in results]
        assert ids == plan[:count], f"{path.name}: not the first {count} planned samples"
        assert {r["image_id"]: r["generated_caption"] for r in results} == {
            i: captions[i] for i in ids
        }, f"{path.name}: its captions are not the committed ones"
        numbered = NUMBERED_RE.match(path.name)
        if numbered:
            assert int(numbered["count"]) == count, path.name
            assert count % INTERVAL == 0, path.name
            stamp = datetime.fromisoformat(meta["timestamp"]).strftime("%Y%m%d_%H%M%S")
            assert path.stem.endswith(f"_{stamp}"), (path.name, meta["timestamp"])
        else:
            assert path.name == f"checkpoint_{crash.method}_latest.json", path.name
        written.append((meta["timestamp"], count))
    written.sort()
    counts = [count for _, count in written]
    assert counts == sorted(counts), f"a newer checkpoint holds fewer results: {written}"
    return written


def exported_rows(cli: Callable[..., Result], out: Path) -> dict[int, dict[str, Any]]:
    """What `export --format jsonl` gives per sample: caption, reasoning trace, metrics."""
    target = out / "export.jsonl"
    done = cli("export", RUN_ID, "--format", "jsonl", "-o", str(target), "--output_dir", str(out))
    assert done.exit_code == 0, done.output
    rows = {}
    for line in target.read_text().splitlines():
        row = json.loads(line)
        assert set(row) - ROW_COLUMNS == METRICS, sorted(row)
        rows[row["image_id"]] = {
            "generated_caption": row["generated_caption"],
            "reasoning_trace": row["reasoning_trace"],
            "metrics": {name: row[name] for name in METRICS},
        }
    return rows


def final_results(out: Path, method: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        (out / RUN_ID / method / f"results_{method}.json").read_bytes()
    )
    return doc


def survives_a_crash_loop(tmp_path: Path, cli: Callable[..., Result], crash: Crash) -> None:
    """Kill the run `crash.kills` times, resume it to the end, compare with a clean run."""
    env = subprocess_env(COBRA_EVAL_CACHE=str(tmp_path / "cache"), **UNBUFFERED)
    method, total = crash.method, crash.total

    # an uninterrupted run of the same config: the expected end state, and the timing
    clean_out = tmp_path / "clean"
    clean = run_process(
        [sys.executable, "-m", "cobra_eval", *crash.args(clean_out)], env, tmp_path / "clean.log"
    )
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert len(clean.sample_times) == total, clean.stdout[-2000:]
    clean_rows = exported_rows(cli, clean_out)
    assert len(clean_rows) == total
    # the comparison can fail: captions differ from sample to sample
    assert len({row["generated_caption"] for row in clean_rows.values()}) > 1

    startup, last_sample = clean.sample_times[0], clean.sample_times[-1]
    batch = (last_sample - startup) / (total / BATCH - 1)
    schedule = plan_kills(crash, startup, batch)
    # World's readers of the SQLite file in this output folder (the dataset is --dataset demo)
    world = World(tmp_path, Path("demo"), tmp_path / "crash")
    args = crash.args(world.out)
    progress: list[int] = []
    #: kills that could find no new rows: the early ones, and an export kill that hit the
    #: checkpoint a resume writes first when the kill before it fell between commit and export
    flat_allowed = crash.early

    def story() -> str:
        return (
            f"seed {crash.seed}; uninterrupted run: first sample after {startup:.2f}s, "
            f"then {batch:.2f}s a batch; kill schedule: {', '.join(map(str, schedule))}; "
            f"committed rows after each kill: {progress}"
        )

    for i, kill in enumerate(schedule):
        before = progress[-1] if progress else 0
        catch_up = scheduled_count(before, INTERVAL) > recorded_count(world, method)
        in_catch_up = kill.point == "export" and kill.n <= EXPORT_HITS and catch_up
        flat_allowed += in_catch_up
        command = kill.command([*args, "--resume_from_checkpoint"] if i else args)
        killed = run_process(command, env, tmp_path / f"kill_{i + 1:02d}.log", kill)
        where = f"kill {i + 1}/{crash.kills} ({kill})"
        assert killed.returncode == -signal.SIGKILL, (
            f"{where}: exit {killed.returncode} instead of a SIGKILL; {story()}\n"
            f"{killed.stderr[-3000:]}"
        )
        if kill.point is not None:
            assert f"kill_points: SIGKILL at {kill.point} #{kill.n}" in killed.stderr, (
                f"{where}: died elsewhere; {story()}\n{killed.stderr[-3000:]}"
            )
        captions = committed(world, method)
        progress.append(len(captions))
        if in_catch_up:
            # the missed checkpoint is written before anything new is generated
            assert len(captions) == before, f"{where}: rows grew in the catch-up; {story()}"
        printed = [int(m[1]) for m in PROCESSED_RE.finditer(killed.stdout)]
        # only what was not committed is generated again; what was reported stays committed
        assert printed == list(range(before + 1, before + 1 + len(printed))), (
            f"{where}: printed Processed {printed} after {before} committed rows; {story()}"
        )
        assert max(printed, default=0) <= len(captions), (
            f"{where}: printed Processed {max(printed)}/{total} but only {len(captions)} rows "
            f"are committed; {story()}"
        )
        check_checkpoint_files(world, crash, captions)
        if world.has_table("checkpoint"):
            check_recorded(world, finals=False)

    assert progress == sorted(progress), f"committed rows went backwards; {story()}"
    # every kill but the early ones (and one inside a catch-up export) found new rows
    grew = sum(after > before for before, after in itertools.pairwise([0, *progress]))
    assert grew >= crash.kills - flat_allowed, f"only {grew} kills found new rows; {story()}"

    last = run_process(
        [sys.executable, "-m", "cobra_eval", *args, "--resume_from_checkpoint"],
        env,
        tmp_path / "last.log",
    )
    assert last.returncode == 0, f"the last resume failed; {story()}\n{last.stderr[-3000:]}"
    assert f"Done: {method} {total}/{total} samples" in last.stdout, last.stdout[-2000:]
    print(f"\n{method}: {story()}; the last resume took {last.total_s:.2f}s")

    captions = committed(world, method)
    assert len(captions) == total, f"{len(captions)} rows for {method}; {story()}"
    assert world.rows("SELECT COUNT(*) FROM sample_result WHERE status != 'ok'") == [(0,)]
    assert world.rows("SELECT id, status FROM run") == [(RUN_ID, "finished")]
    assert world.rows("SELECT method, status FROM run_method") == [(method, "finished")]
    written = check_checkpoint_files(world, crash, captions)
    assert written[-1][1] == total, f"checkpoints (timestamp, count): {written}; {story()}"
    assert temp_files(world) == [], "a dead writer's temp file was left"
    check_recorded(world, finals=True)

    final, clean_final = final_results(world.out, method), final_results(clean_out, method)
    assert final["meta"]["is_checkpoint"] is False
    assert len(final["results"]) == final["meta"]["samples_processed"] == total
    assert exported_rows(cli, world.out) == clean_rows, (
        f"captions, reasoning or per-sample metrics differ from the uninterrupted run; {story()}"
    )
    assert final["corpus_metrics"] == clean_final["corpus_metrics"], story()
    assert without_cache_marks(final["results"]) == without_cache_marks(clean_final["results"]), (
        f"the final results file differs from the uninterrupted run's; {story()}"
    )


@pytest.mark.slow
def test_demo_model_survives_15_random_sigkills(tmp_path: Path, cli: Callable[..., Result]) -> None:
    survives_a_crash_loop(
        tmp_path, cli, Crash("baseline", total=200, kills=15, early=5, seed=20251130)
    )


@pytest.mark.slow
def test_demo_scratchpad_compare_survives_5_random_sigkills(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    # three passes a sample, with reasoning to compare; one mid-run kill, as more could finish it
    survives_a_crash_loop(
        tmp_path, cli, Crash("scratchpad_compare", total=40, kills=5, early=2, seed=20251201)
    )
