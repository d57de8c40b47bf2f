"""Crash safety: SIGKILL a run mid-batch, mid-commit and mid-export, resume, compare.

Real processes, a real SQLite file, real checkpoint files. Each test kills a run
(at a chosen point with tests/kill_points.py, or at random moments from outside),
checks what a kill must leave intact (every sample reported as processed is
committed, no duplicates, every JSON file whole and consistent), resumes with
--resume_from_checkpoint, and requires the end state of an uninterrupted run.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import random
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BACKEND, REPO, World, run_cli_process, subprocess_env
from tests.stand_in import make_coco_world

pytestmark = pytest.mark.databases

TOTAL, INTERVAL, BATCH = 40, 10, 4
METHODS = {
    "baseline": ["baseline"],
    "all": ["baseline", "scratchpad", "llava_cot", "scratchpad_compare"],
}
PASSES = {"baseline": 1, "scratchpad": 1, "llava_cot": 1, "scratchpad_compare": 3}
#: Output lines must reach the pipe before the SIGKILL, as they would reach a terminal.
UNBUFFERED = {"PYTHONUNBUFFERED": "1"}
PROCESSED_RE = re.compile(r"Processed (\d+)/(\d+) samples")
SAVED_RE = re.compile(r"Checkpoint saved: (\S+) \(")
HEADER_RE = re.compile(r"^== (\S+) \(run ")
NUMBERED_RE = re.compile(r"^checkpoint_(?P<method>.+)_(?P<count>\d+)_\d{8}_\d{6}\.json$")


def config_args(method_opt: str) -> list[str]:
    return [
        "--num_samples", str(TOTAL),
        "--checkpoint_interval", str(INTERVAL),
        "--batch_size", str(BATCH),
        "--method", method_opt,
    ]  # fmt: skip


def run_killed_at(
    world: World, point: str, hit: int, method_opt: str
) -> subprocess.CompletedProcess[str]:
    """The CLI in a process that SIGKILLs itself at the hit-th pass through `point`."""
    return subprocess.run(
        [sys.executable, "-m", "tests.kill_points", point, str(hit), "--",
         *world.run_args(*config_args(method_opt))],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(**UNBUFFERED),
        cwd=REPO,
    )  # fmt: skip


def resume(world: World, method_opt: str) -> subprocess.CompletedProcess[str]:
    args = world.run_args(*config_args(method_opt), "--resume_from_checkpoint")
    return run_cli_process(*args, timeout=60, **UNBUFFERED)


def by_method(stdout: str, method_opt: str, pattern: re.Pattern[str]) -> dict[str, list[str]]:
    """First group of each line matching pattern, per method (`--method all` prints headers)."""
    methods = METHODS[method_opt]
    found: dict[str, list[str]] = {m: [] for m in methods}
    current = methods[0]
    for line in stdout.splitlines():
        if header := HEADER_RE.match(line):
            current = header[1]
        elif match := pattern.search(line):
            found[current].append(match[1])
    return found


def printed_counts(stdout: str, method_opt: str) -> dict[str, list[int]]:
    """The i of every `Processed i/N` line, per method."""
    return {m: [int(c) for c in v] for m, v in by_method(stdout, method_opt, PROCESSED_RE).items()}


def db_state(world: World, methods: list[str]) -> tuple[dict[str, dict[int, str]], list[int]]:
    """Check the database's invariants; return each method's captions and the plan."""
    run_id = world.only_run_id()
    dupes = world.rows(
        "SELECT run_id, method, image_id, COUNT(*) FROM sample_result "
        "GROUP BY run_id, method, image_id HAVING COUNT(*) > 1"
    )
    assert dupes == [], f"duplicate results: {dupes}"
    assert world.rows("SELECT image_id, status FROM sample_result WHERE status != 'ok'") == []
    assert {r[0] for r in world.rows("SELECT DISTINCT method FROM sample_result")} <= set(methods)
    # a committed sample is whole: all of its method's pass rows
    counts = world.rows(
        "SELECT r.method, COUNT(p.id) FROM sample_result r "
        "LEFT JOIN sample_pass p ON p.result_id = r.id GROUP BY r.id"
    )
    partial = [(m, n) for m, n in counts if n != PASSES[m]]
    assert partial == [], f"results without all their passes: {partial}"
    for table in ("sample_pass", "metric_value"):
        orphans = (
            f"SELECT COUNT(*) FROM {table} WHERE result_id NOT IN (SELECT id FROM sample_result)"
        )
        assert world.rows(orphans) == [(0,)], f"orphan rows in {table}"
    plan = [
        r[0]
        for r in world.rows(
            "SELECT image_id FROM planned_sample WHERE run_id = ? ORDER BY position", run_id
        )
    ]
    assert len(plan) in (0, TOTAL) and len(set(plan)) == len(plan), plan
    captions: dict[str, dict[int, str]] = {}
    for method in methods:
        rows = world.rows(
            "SELECT image_id, generated_caption FROM sample_result WHERE run_id = ? AND method = ?",
            run_id,
            method,
        )
        captions[method] = dict(rows)
        # samples are committed in plan order: what is stored is a prefix of the plan
        assert set(captions[method]) == set(plan[: len(rows)]), f"{method}: gaps in the plan"
    for earlier, later in itertools.pairwise(methods):
        if captions[later]:
            assert len(captions[earlier]) == TOTAL, f"{later} started before {earlier} finished"
    return captions, plan


def check_json(path: Path, captions: dict[str, dict[int, str]], plan: list[int]) -> dict[str, Any]:
    """A checkpoint/results file parses, its counts agree, and it matches the database."""
    method = path.parent.name
    doc = json.loads(path.read_bytes())  # a truncated or torn file fails here
    meta, info, results = doc["meta"], doc["checkpoint_info"], doc["results"]
    count = info["processed_count"]
    assert count == len(results) == meta["samples_processed"], path.name
    assert count + info["remaining_count"] == meta["total_samples"] == TOTAL, path.name
    assert meta["method"] == method and meta["run_id"] == path.parent.parent.name, path.name
    ids = [r["image_id"] for r in results]
    assert ids == plan[:count], f"{path.name}: results are not the first {count} planned samples"
    # an exported sample is a committed sample, with the same caption
    exported = {r["image_id"]: r["generated_caption"] for r in results}
    assert exported == {i: captions[method][i] for i in ids}, path.name
    return doc


def check_files(world: World, captions: dict[str, dict[int, str]], plan: list[int]) -> None:
    """Every checkpoint_*.json and results_*.json under the output folder is valid."""
    for path in sorted(world.out.glob("*/*/*.json")):
        doc = check_json(path, captions, plan)
        numbered = NUMBERED_RE.match(path.name)
        if numbered:
            assert int(numbered["count"]) == doc["checkpoint_info"]["processed_count"], path.name
            assert int(numbered["count"]) % INTERVAL == 0, path.name
        if path.name.startswith("results_"):
            assert doc["meta"]["is_checkpoint"] is False, path.name
        else:
            assert path.name.startswith("checkpoint_"), path.name
            assert doc["meta"]["is_checkpoint"] is True, path.name


def check_recorded(world: World, *, finals: bool) -> None:
    """Files the checkpoint table records hold the recorded bytes (the newest record per path)."""
    newest: dict[str, tuple[str, int, bool]] = {}
    for path, sha, size, is_final in world.rows(
        "SELECT path, sha256, bytes, is_final FROM checkpoint ORDER BY id"
    ):
        newest[path] = (sha, size, bool(is_final))
    for path, (sha, size, is_final) in newest.items():
        if is_final and not finals:
            continue  # a later process may have rewritten it and died before recording
        if not is_final and not Path(path).exists() and NUMBERED_RE.match(Path(path).name):
            continue  # an older numbered snapshot that --keep_checkpoints deleted
        data = Path(path).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (sha, size), path


def temp_files(world: World) -> list[Path]:
    """Temp files of write_atomic (.NAME.XXXXXXXX.tmp) left behind by a kill."""
    return sorted(world.out.glob("*/*/.*.tmp"))


def check_after_kill(world: World, method_opt: str, stdout: str) -> dict[str, int]:
    """What a SIGKILL must leave intact; returns the committed rows per method."""
    methods = METHODS[method_opt]
    captions, plan = db_state(world, methods)
    rows = {m: len(captions[m]) for m in methods}
    for method, counts in printed_counts(stdout, method_opt).items():
        assert all(c <= rows[method] for c in counts), (
            f"{method}: printed Processed {max(counts)} but only {rows[method]} rows are committed"
        )
    for method, names in by_method(stdout, method_opt, SAVED_RE).items():
        for name in names:
            assert list(world.out.glob(f"*/{method}/{name}")), f"reported {name} is missing"
    check_files(world, captions, plan)
    check_recorded(world, finals=False)
    return rows


def without_cache_marks(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results minus 'cached' flags: a resumed sample may reuse the killed run's generations."""
    out = []
    for result in results:
        meta = {k: v for k, v in result["metadata"].items() if k != "cached"}
        meta["passes"] = [
            {k: v for k, v in p.items() if k != "cached"} for p in meta.get("passes", [])
        ]
        out.append({**result, "metadata": meta})
    return out


def check_finished(world: World, method_opt: str, clean: dict[str, list[dict[str, Any]]]) -> None:
    """The end state of an uninterrupted run of the same config."""
    methods = METHODS[method_opt]
    captions, plan = db_state(world, methods)
    run_id = world.only_run_id()
    for method in methods:
        assert len(captions[method]) == TOTAL, method
        expected = {r["image_id"]: r["generated_caption"] for r in clean[method]}
        assert captions[method] == expected, f"{method}: captions differ from a clean run"
        folder = world.method_dir(run_id, method)
        final = json.loads((folder / f"results_{method}.json").read_bytes())
        assert without_cache_marks(final["results"]) == without_cache_marks(clean[method]), (
            f"{method}: final results differ from a clean run"
        )
        latest = json.loads((folder / f"checkpoint_{method}_latest.json").read_bytes())
        assert latest["checkpoint_info"] == {"processed_count": TOTAL, "remaining_count": 0}
    statuses = world.rows(
        "SELECT method, status FROM run_method WHERE run_id = ? ORDER BY id", run_id
    )
    assert statuses == [(m, "finished") for m in methods]
    assert world.rows("SELECT status FROM run") == [("finished",)]
    check_files(world, captions, plan)
    check_recorded(world, finals=True)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, list[Any]]]:
    """Final `results` of an uninterrupted run per --method, on an identical dataset."""
    root = tmp_path_factory.mktemp("clean")
    dataset = make_coco_world(root / "data", TOTAL)  # deterministic: same bytes as `world`'s
    cache: dict[str, dict[str, list[Any]]] = {}

    def get(method_opt: str) -> dict[str, list[Any]]:
        if method_opt not in cache:
            out = root / method_opt
            done = run_cli_process(
                "--backend", BACKEND, "--dataset", str(dataset), "--output_dir", str(out),
                "--metrics", "none", *config_args(method_opt), timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            results = {}
            for method in METHODS[method_opt]:
                (path,) = out.glob(f"*/{method}/results_{method}.json")
                results[method] = json.loads(path.read_bytes())["results"]
                assert len(results[method]) == TOTAL
                # the comparison can fail: captions differ from sample to sample
                assert len({r["generated_caption"] for r in results[method]}) > 1
            cache[method_opt] = results
        return cache[method_opt]

    return get


BASE = "baseline"
CHECKPOINT_10 = "checkpoint_baseline_10_*.json"
LATEST, FINAL = "checkpoint_baseline_latest.json", "results_baseline.json"
KILL_CASES = [
    # point, hit, --method, rows committed at death, name the left temp file was meant for.
    # A batch's samples come into being together and are committed in one transaction
    # (split where a checkpoint falls due); batches are committed while the next ones
    # generate, and wait for it meanwhile, so a kill right after the 3rd generate finds the
    # 1st and the 2nd committed or not yet (their outputs are in the generation cache)
    pytest.param("generate", 1, BASE, {BASE: 0}, None, id="generate-1st-batch"),
    pytest.param("generate", 3, BASE, {BASE: (0, 4, 8)}, None, id="generate-3rd-batch"),
    pytest.param("commit", 1, BASE, {BASE: 0}, None, id="commit-1st-sample"),
    pytest.param("commit", 6, BASE, {BASE: 4}, None, id="commit-mid-batch"),
    pytest.param("commit", 17, BASE, {BASE: 16}, None, id="commit-17th-sample"),
    pytest.param("commit", 40, BASE, {BASE: 36}, None, id="commit-last-sample"),
    pytest.param(
        "commit",
        45,
        "all",
        {BASE: 40, "scratchpad": 4, "llava_cot": 0, "scratchpad_compare": 0},
        None,
        id="commit-2nd-method",
    ),
    pytest.param("export", 1, BASE, {BASE: 10}, CHECKPOINT_10, id="export-1st-checkpoint"),
    pytest.param("export", 2, BASE, {BASE: 10}, LATEST, id="export-1st-latest"),
    pytest.param("export", 4, BASE, {BASE: 20}, LATEST, id="export-overwriting-latest"),
    pytest.param("export", 9, BASE, {BASE: 40}, FINAL, id="export-final-results"),
]


@pytest.mark.parametrize(("point", "hit", "method_opt", "rows_at_death", "temp_target"), KILL_CASES)
def test_sigkill_at_a_point_then_resume_ends_like_a_clean_run(
    world: World,
    clean: Callable[[str], dict[str, list[Any]]],
    point: str,
    hit: int,
    method_opt: str,
    rows_at_death: dict[str, int],
    temp_target: str | None,
) -> None:
    killed = run_killed_at(world, point, hit, method_opt)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    assert f"kill_points: SIGKILL at {point} #{hit}" in killed.stderr

    rows = check_after_kill(world, method_opt, killed.stdout)
    for method, expected in rows_at_death.items():
        assert rows[method] in (expected if isinstance(expected, tuple) else (expected,)), rows
    printed = printed_counts(killed.stdout, method_opt)
    for method in METHODS[method_opt]:
        # committed samples were reported each once, in order, and never one not committed;
        # a kill from the generating thread may find the last batch's lines still printing
        shown = len(printed[method]) if point == "generate" else rows[method]
        assert printed[method] == list(range(1, shown + 1)), method
        assert rows[method] - BATCH <= shown <= rows[method], method
    run_id = world.only_run_id()
    statuses = world.rows(
        "SELECT method, status FROM run_method WHERE run_id = ? ORDER BY id", run_id
    )
    assert statuses[-1][1] == "running"  # the method it died in: nobody marked it

    temps = temp_files(world)
    if temp_target is None:
        assert temps == []
    else:
        # killed between fsync and rename: a whole temp file, and the real name untouched
        (temp,) = temps
        target = temp.parent / (temp.name[1:].split(".json.", 1)[0] + ".json")
        assert fnmatch.fnmatch(target.name, temp_target), target.name
        method = temp.parent.name
        captions, plan = db_state(world, METHODS[method_opt])
        tmp_doc = check_json(temp, captions, plan)
        assert tmp_doc["checkpoint_info"]["processed_count"] == rows[method]
        if target.name.endswith("_latest.json") and rows[method] > INTERVAL:
            assert target.exists(), "the previous latest checkpoint is gone"
        if target.exists():
            old = check_json(target, captions, plan)  # the old version, whole
            assert old["checkpoint_info"]["processed_count"] < rows[method]

    resumed = resume(world, method_opt)
    assert resumed.returncode == 0, resumed.stderr
    assert world.only_run_id() == run_id, "resume must continue the killed run"
    assert temp_files(world) == [], "the dead writer's temp file is cleared on resume"
    for method in METHODS[method_opt]:
        # a checkpoint the kill skipped (died after the commit, before its export) is caught up
        due = rows[method] // INTERVAL * INTERVAL
        if due:
            name = f"checkpoint_{method}_{due}_"
            assert any(p.name.startswith(name) for p in world.checkpoints(method)), name
    again = printed_counts(resumed.stdout, method_opt)
    for method in METHODS[method_opt]:
        # only what was not committed is generated again, and nothing twice
        assert again[method] == list(range(rows[method] + 1, TOTAL + 1)), method
    if point == "generate":
        # batches the model answered before the kill, committed or not, cost no model call
        # again: their outputs reached the generation cache as they came back
        answered = (hit - 1) * BATCH
        assert f"({TOTAL - answered} by the model, {answered - rows[BASE]} from cache)" in (
            resumed.stdout
        ), resumed.stdout
    check_finished(world, method_opt, clean(method_opt))


MAX_KILLS = 15
#: A run of every method prints about 200 lines; a kill comes after up to this many.
KILL_AFTER_LINES = 60


def kill_after_lines(proc: subprocess.Popen[str], lines: int, delay_s: float) -> str:
    """SIGKILL proc once it printed `lines` lines and then `delay_s` passed; what it printed.

    Counting lines, not seconds from the start, lands kills mid-run however long this
    machine takes to start Python and connect to the database.
    """
    assert proc.stdout is not None
    printed = list(itertools.islice(iter(proc.stdout.readline, ""), lines))
    try:
        proc.wait(timeout=delay_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    return "".join(printed)


@pytest.mark.slow
def test_random_sigkills_then_resume_end_like_a_clean_run(
    world: World, clean: Callable[[str], dict[str, list[Any]]]
) -> None:
    rng = random.Random(1234)
    env = subprocess_env(COBRA_TEST_DELAY="0.15", **UNBUFFERED)
    extra: list[str] = []
    kills, progress = 0, []
    while True:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cobra_eval", *world.run_args(*config_args("all")), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        printed = ""
        if kills < MAX_KILLS:
            lines = rng.choice([0, rng.randint(1, KILL_AFTER_LINES)])
            printed = kill_after_lines(proc, lines, rng.uniform(0.0, 0.5))
        stdout, stderr = proc.communicate(timeout=60)
        stdout = printed + stdout
        extra = ["--resume_from_checkpoint"]
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, stderr)
        kills += 1
        if world.has_table("run") and world.rows("SELECT COUNT(*) FROM run") == [(1,)]:
            rows = check_after_kill(world, "all", stdout)
            progress.append(sum(rows.values()))
        else:
            assert "Processed" not in stdout  # nothing was reported before the run existed
    assert kills >= 3, f"only {kills} kills: the run is too fast to test anything"
    assert progress == sorted(progress), f"committed samples went backwards: {progress}"
    assert any(0 < p < 2 * TOTAL for p in progress), f"no kill hit a run mid-way: {progress}"
    check_finished(world, "all", clean("all"))
