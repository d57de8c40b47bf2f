"""Many workers on one run: claims share the work, a killed worker's samples are taken over,
nothing is generated twice while claimed, nothing is committed twice, nothing is lost."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from cobra_eval.datasets import Sample, load_dataset, select_samples
from cobra_eval.metrics.per_sample import SampleScorer
from cobra_eval.metrics.pooling import pooled_bleu
from cobra_eval.store import Store, resolve_url
from cobra_eval.store.checkpoint_io import ResultRecord
from cobra_eval.store.claims import DEAD_CHECK_S, ClaimCursor, claim_batch
from cobra_eval.store.engine import user_at_host
from cobra_eval.store.models import utcnow
from cobra_eval.store.repository import RESULT, CommitItem
from tests.conftest import REPO, World, load_json, subprocess_env
from tests.stand_in import DELAY_ENV, GENLOG_ENV, EchoBackend, make_coco_world
from tests.test_snapshot_export import new_run

pytestmark = pytest.mark.databases

N = 80


def start_worker(world: World, log: Path, *extra: str) -> subprocess.Popen[str]:
    dataset = world.root / "big" / "captions.json"
    if not dataset.exists():
        make_coco_world(dataset.parent, N)
    args = world.run_args(
        "--dataset", str(dataset), "--run_id", "shared", "--num_samples", str(N),
        "--batch_size", "2", "--checkpoint_interval", "5", "--lease_seconds", "3", *extra,
    )  # fmt: skip
    env = subprocess_env(**{DELAY_ENV: "0.3", GENLOG_ENV: str(log)})
    return subprocess.Popen([sys.executable, "-m", "cobra_eval", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def generations(log: Path) -> list[tuple[int, int, float]]:
    """(pid, image_id, time) of every generation, in time order."""
    out = []
    for line in log.read_text().splitlines():
        pid, name, when = line.split()
        out.append((int(pid), int(name.removeprefix("img_").removesuffix(".png")), float(when)))
    return sorted(out, key=lambda g: g[2])


@pytest.mark.slow
def test_four_workers_one_killed_every_sample_exactly_once(world: World, cli) -> None:
    log = world.root / "generations.log"
    workers = [start_worker(world, log)]
    time.sleep(1.0)  # the first creates the run; the others join it
    workers += [start_worker(world, log) for _ in range(3)]
    victim = workers[1]

    def by_victim() -> int:
        return sum(g[0] == victim.pid for g in generations(log)) if log.exists() else 0

    # kill one right after it generated a batch, before it commits it: it holds live claims
    deadline = time.monotonic() + 60
    while by_victim() < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    seen = by_victim()
    while by_victim() == seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert victim.poll() is None, f"the worker to kill ended first: {victim.communicate()}"
    victim.send_signal(signal.SIGKILL)
    killed_at = time.time()
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        if worker is not victim:
            assert worker.returncode == 0, err + out
    assert victim.returncode == -signal.SIGKILL

    rows = world.rows("SELECT image_id, status, worker FROM sample_result WHERE run_id = 'shared'")
    assert len(rows) == N and {r[1] for r in rows} == {"ok"}
    assert len({r[0] for r in rows}) == N  # every planned sample committed exactly once
    by_worker: dict[str, int] = defaultdict(int)
    for _, _, worker in rows:
        by_worker[worker.rsplit(":", 1)[1]] += 1
    assert len(by_worker) >= 3  # the work really was shared

    gens = generations(log)
    first_by: dict[int, int] = {}
    twice = []
    for pid, image_id, _ in gens:
        if image_id in first_by:
            twice.append((image_id, first_by[image_id], pid))
        else:
            first_by[image_id] = pid
    # a sample is generated again only after the killed worker's claim on it was taken over
    assert all(first == victim.pid and again != victim.pid for _, first, again in twice), twice
    again_at = {i: t for pid, i, t in gens if pid != victim.pid and i in {x for x, _, _ in twice}}
    assert all(t > killed_at for t in again_at.values())
    committed_by = {image_id: worker.rsplit(":", 1)[1] for image_id, _, worker in rows}
    taken_over = [i for i, first, _ in twice]
    assert all(committed_by[i] != str(victim.pid) for i in taken_over)
    # the killed worker generated samples it never committed; the others finished them
    victim_generated = {i for pid, i, _ in gens if pid == victim.pid}
    assert victim_generated - {i for i, w in committed_by.items() if w == str(victim.pid)}
    # checkpoints: one exporter at a time, counts only grow, the final file has everything
    folder = world.method_dir("shared", "baseline")
    counts = sorted(int(p.name.split("_")[2]) for p in folder.glob("checkpoint_baseline_*_*.json")
                    if "latest" not in p.name)  # fmt: skip
    assert counts == sorted(set(counts)) and counts[-1] <= N
    # all but the newest 10 (--keep_checkpoints' default) were deleted; the database recorded all
    recorded = world.rows(
        "SELECT DISTINCT count FROM checkpoint WHERE run_id = 'shared' AND is_final = ?", False
    )
    assert len(counts) == 10 and len(recorded) >= N // 5 - 2
    assert counts == sorted(c for (c,) in recorded)[-10:]
    final = load_json(folder / "results_baseline.json")
    assert final["checkpoint_info"] == {"processed_count": N, "remaining_count": 0}
    assert world.rows("SELECT status FROM run_method WHERE run_id = 'shared'") == [("finished",)]
    assert world.rows("SELECT COUNT(*) FROM sample_claim") == [(0,)]  # cleared when finished
    # who did what is on record: `runs` shows every worker and its share
    import json

    (listed,) = json.loads(cli("runs", *world.db_option, "--format", "json").stdout)
    assert sum(listed["workers"].values()) == N and len(listed["workers"]) == len(by_worker)
    table = cli("runs", *world.db_option).output
    assert f"x{len(by_worker)}" in table


def test_claims_of_a_worker_on_another_machine_are_waited_for_then_taken_over(
    world: World, cli
) -> None:
    first = cli(*world.run_args("--run_id", "r", "--num_samples", "4"))
    assert first.exit_code == 0, first.output
    # a worker elsewhere holds samples 5 and 6 of the extended run; its claims lapse in 2 s
    held = [i for (i,) in world.rows("SELECT image_id FROM planned_sample ORDER BY position")]
    assert len(held) == 4
    from datetime import datetime, timedelta, timezone

    from cobra_eval.store import Store, resolve_url
    from cobra_eval.store.claims import CLAIM

    later = world.run_args("--run_id", "r", "--num_samples", "8", "--lease_seconds", "2")
    with Store.open(resolve_url(world.url or str(world.db))) as store:
        store.ensure_plan("r", [*held, 1028, 1035, 1042, 1049])
        now = datetime.now(timezone.utc)
        with store.engine.begin() as conn:
            conn.execute(CLAIM.insert(), [
                {"run_id": "r", "method": "baseline", "image_id": i, "worker": "ann@elsewhere:77",
                 "claimed_at": now, "expires_at": now + timedelta(seconds=2)}
                for i in (1028, 1035)
            ])  # fmt: skip
    result = cli(*later)
    assert result.exit_code == 0, result.output
    assert "Waiting for 2 samples other workers hold" in result.output
    workers = dict(world.rows("SELECT image_id, worker FROM sample_result"))
    assert len(workers) == 8 and all(w != "ann@elsewhere:77" for w in workers.values())


@pytest.mark.postgresql_only
def test_a_database_password_never_shows(world: World, cli) -> None:
    assert world.url is not None
    # the throwaway server trusts loopback, so any password connects: it must still never show
    url = world.url.replace("postgres@", "postgres:s3cret-pw@")
    result = cli(*world.run_args("--db", url, "--num_samples", "3", "--checkpoint_interval", "2"))
    assert result.exit_code == 0, result.output
    assert "postgres:***@127.0.0.1" in result.output
    runs = cli("runs", "--db", url)
    bad = cli("export", "nope", "--db", url)
    texts = [result.output, runs.output, bad.output]
    texts += [p.read_text() for p in world.out.rglob("*.json")]
    assert all("s3cret-pw" not in text for text in texts)
    assert "postgres:***@" in bad.output


def commit_as_another_worker(
    url: str, run_id: str, sample: Sample, caption: str, *, created_at: datetime | None = None
) -> None:
    """Commit a baseline result for sample (BLEU scored) as a worker on another machine would;
    with created_at, stamped as a transaction that began then."""
    score = SampleScorer({sample.image_id: sample.references}, ["bleu"]).score(
        [(sample.image_id, caption)]
    )[0]
    record = ResultRecord(image_id=sample.image_id, reference_captions=list(sample.references),
                          generated_caption=caption, metrics=score.scores)  # fmt: skip
    store = Store.open(url)
    try:
        store.commit_results(run_id, "baseline", [CommitItem(record, 0.1, score.detail)],
                             worker="someone@elsewhere:1")  # fmt: skip
        if created_at is not None:
            with store.engine.begin() as conn:
                conn.execute(
                    update(RESULT)
                    .where(RESULT.c.image_id == sample.image_id)
                    .values(created_at=created_at)
                )
    finally:
        store.engine.dispose()


class LateCommitBackend(EchoBackend):
    """Echo, but its first call lets "another worker" commit a sample late: the transaction
    began (and stamped created_at) before this worker loaded the stored scores, and
    committed after."""

    #: (database URL, run id, sample, its created_at) set by the test
    late: tuple[str, str, Sample, datetime] | None = None

    def generate(self, requests: Any, params: Any) -> list[str]:
        if LateCommitBackend.late is not None:
            url, run_id, sample, stamped = LateCommitBackend.late
            LateCommitBackend.late = None
            commit_as_another_worker(url, run_id, sample, "a red circle above a blue square",
                                     created_at=stamped)  # fmt: skip
        return super().generate(requests, params)


@pytest.mark.parametrize("began", ["30 s before", "in 2000"])
def test_corpus_scores_count_a_sample_another_worker_committed_late(
    world: World, cli, began: str
) -> None:
    dataset = load_dataset(str(world.dataset))
    last = select_samples(dataset, 8).samples[-1]
    url = world.url or resolve_url(None, world.out)
    stamped = utcnow() - timedelta(seconds=30) if began == "30 s before" else datetime(2000, 1, 1)
    LateCommitBackend.late = (url, "late", last, stamped)
    result = cli(*world.run_args("--backend", "tests.test_workers:LateCommitBackend",
                                 "--num_samples", "8", "--batch_size", "1", "--run_id", "late",
                                 "--checkpoint_interval", "4", "--metrics", "bleu"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert LateCommitBackend.late is None  # the other worker did commit
    workers = dict(world.rows("SELECT image_id, worker FROM sample_result"))
    assert len(workers) == 8 and workers[last.image_id] == "someone@elsewhere:1"
    folder = world.method_dir("late", "baseline")
    if began == "30 s before":
        # a transaction's length is looked back over at each checkpoint
        (first,) = folder.glob("checkpoint_baseline_4_*.json")
        assert load_json(first)["corpus_metrics"]["n_samples"] == 4
    # every committed sample is in the final corpus scores, however late it was committed
    final = load_json(folder / "results_baseline.json")
    assert final["corpus_metrics"]["n_samples"] == 8


class RacedCommitBackend(EchoBackend):
    """Echo, but while it generates one sample "another worker" commits that sample first
    (a claim that expired under a stalled worker, then was taken over), with another caption."""

    #: (database URL, run id, sample) set by the test
    raced: tuple[str, str, Sample] | None = None

    def generate(self, requests: Any, params: Any) -> list[str]:
        raced = RacedCommitBackend.raced
        if raced is not None and any(r.image_path == raced[2].image_path for r in requests):
            url, run_id, sample = raced
            RacedCommitBackend.raced = None
            commit_as_another_worker(url, run_id, sample, "two shapes")
        return super().generate(requests, params)


def test_corpus_scores_take_the_stored_row_of_a_sample_another_worker_committed_first(
    world: World, cli
) -> None:
    samples = select_samples(load_dataset(str(world.dataset)), 8).samples
    raced = samples[2]
    url = world.url or resolve_url(None, world.out)
    RacedCommitBackend.raced = (url, "raced", raced)
    result = cli(*world.run_args("--backend", "tests.test_workers:RacedCommitBackend",
                                 "--num_samples", "8", "--batch_size", "2", "--run_id", "raced",
                                 "--checkpoint_interval", "4", "--metrics", "bleu"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert RacedCommitBackend.raced is None  # the other worker did commit
    rows = world.rows("SELECT image_id, worker, generated_caption, scoring FROM sample_result")
    stored = {image_id: (worker, caption, scoring) for image_id, worker, caption, scoring in rows}
    assert len(stored) == 8 and stored[raced.image_id][:2] == ("someone@elsewhere:1", "two shapes")
    comps = [json.loads(s) if isinstance(s, str) else s for _, _, s in stored.values()]
    want = pooled_bleu([c["bleu"] for c in comps])
    final = load_json(world.method_dir("raced", "baseline") / "results_baseline.json")
    assert final["corpus_metrics"]["n_samples"] == 8
    # this worker's own caption for it (an echo, not "two shapes") is in no corpus score
    assert [final["corpus_metrics"]["scores"][f"Bleu_{n}"] for n in range(1, 5)] == want


def test_samples_in_hand_are_never_claimed_again_however_many(world: World) -> None:
    """A finisher far behind holds a thousand samples and more: none is claimed twice."""
    n = 1500
    with Store.open(resolve_url(world.url or str(world.db))) as store:
        new_run(store, list(range(n)), total=n)
        since = utcnow()
        held = claim_batch(store, "r", "baseline", "w:1", limit=1200, total=n, lease_s=120,
                           retry_failed_before=since)  # fmt: skip
        assert held == list(range(1200))
        # from the start of the plan (no cursor): the held samples are pending, not claimable
        again = claim_batch(store, "r", "baseline", "w:1", limit=16, total=n, lease_s=120,
                            retry_failed_before=since, in_hand=held)  # fmt: skip
        assert again == list(range(1200, 1216))


def test_a_dead_local_workers_claims_are_taken_at_the_first_claim_and_then_every_few_seconds(
    world: World,
) -> None:
    """Looking for dead workers reads every live claim: a claiming worker does it at its first
    claim and then every DEAD_CHECK_S, not at every batch of a fast run."""
    dead = f"{user_at_host()}:{subprocess_pid_gone()}"
    with Store.open(resolve_url(world.url or str(world.db))) as store:
        new_run(store, list(range(1, 11)), total=10)
        since = utcnow()

        def claim(worker: str, cursor: ClaimCursor | None, **extra: Any) -> list[int]:
            return claim_batch(store, "r", "baseline", worker, total=10, lease_s=120,
                               retry_failed_before=since, cursor=cursor, **extra)  # fmt: skip

        assert claim(dead, None, limit=1) == [1]
        cursor = ClaimCursor()
        assert claim("w:1", cursor, limit=2) == [1, 2]  # the first claim looks
        assert claim(dead, None, limit=1, in_hand=range(1, 10)) == [10]  # it "dies" again
        assert claim("w:1", cursor, limit=20) == [3, 4, 5, 6, 7, 8, 9]  # no look: 10 is held
        assert cursor.dead_checked_at is not None
        cursor.dead_checked_at -= DEAD_CHECK_S
        assert claim("w:1", cursor, limit=20) == [10]


def subprocess_pid_gone() -> int:
    """The pid of a process of this host that has exited (no worker runs under it)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _wait_for(condition: Any, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not condition():
        time.sleep(0.05)


def _committed(world: World, by: subprocess.Popen[str] | None = None) -> int:
    """Results committed so far (by one worker process), 0 before the database exists."""
    if not (world.db_exists() and world.has_table("sample_result")):
        return 0
    if by is None:
        return world.rows("SELECT COUNT(*) FROM sample_result")[0][0]
    who = f"{user_at_host()}:{by.pid}"
    return world.rows("SELECT COUNT(*) FROM sample_result WHERE worker = ?", who)[0][0]


@pytest.mark.slow
def test_results_another_worker_commits_without_the_metrics_are_scored(world: World) -> None:
    log = world.root / "generations.log"
    bare = start_worker(world, log)  # --metrics none: its results carry no scores
    try:
        _wait_for(lambda: _committed(world, bare) >= 4)
        scoring = start_worker(world, log, "--metrics", "bleu")
        # the scoring worker has read the stored scores (and scored those four) and runs;
        # the bare one commits more from then on, which it must take in as it goes
        _wait_for(lambda: _committed(world, scoring) >= 4)
        later = _committed(world, bare) + 4
        _wait_for(lambda: _committed(world, bare) >= later)
        assert bare.poll() is None and scoring.poll() is None
    finally:
        bare.send_signal(signal.SIGKILL)
        bare.wait()
    out, err = scoring.communicate(timeout=180)
    assert scoring.returncode == 0, err
    assert "that other workers committed without bleu" in out
    # the final corpus score pools every result, the bare worker's too
    final = world.rows("SELECT n_samples FROM corpus_metric WHERE scope = 'final' "
                       "AND metric = 'Bleu_4'")  # fmt: skip
    assert final == [(N,)]
    assert world.rows("SELECT COUNT(*) FROM sample_result") == [(N,)]
    assert all(
        "Bleu_4" in json.loads(m) for (m,) in world.rows("SELECT metrics FROM sample_result")
    )
    done = load_json(world.method_dir("shared", "baseline") / "results_baseline.json")
    assert len(done["results"]) == N
    assert all("Bleu_4" in r["metrics"] for r in done["results"])


def test_a_run_being_run_is_not_rescored_until_its_worker_stops(world: World, cli) -> None:
    log = world.root / "generations.log"
    worker = start_worker(world, log)
    try:
        _wait_for(lambda: _committed(world) >= 4)
        assert worker.poll() is None, worker.communicate()
        score = ("score", "--run", "shared", "--output_dir", str(world.out), *world.db_args,
                 "--metrics", "bleu")  # fmt: skip
        refused = cli(*score)
        assert refused.exit_code != 0
        assert f"being run now by {user_at_host()}:{worker.pid} (claims until" in refused.output
        assert "nothing was rescored" in refused.output
        assert "Traceback" not in refused.output
        assert world.rows("SELECT COUNT(*) FROM corpus_metric WHERE scope = 'rescore'") == [(0,)]
        assert {m for (m,) in world.rows("SELECT metrics FROM sample_result")} == {"{}"}
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    # its claims end with it: the samples it committed are rescored
    done = cli(*score)
    assert done.exit_code == 0, done.output
    rescored = world.rows("SELECT metric FROM corpus_metric WHERE scope = 'rescore' ORDER BY 1")
    assert rescored == [("Bleu_1",), ("Bleu_2",), ("Bleu_3",), ("Bleu_4",)]
    assert all(
        "Bleu_1" in json.loads(m) for (m,) in world.rows("SELECT metrics FROM sample_result")
    )
