"""The per-batch result count a run keeps reads only new rows, and stays exact."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, insert, select

from cobra_eval.store.repository import METRIC, RESULT
from cobra_eval.store.tally import FULL_EVERY, ResultTally
from tests.conftest import World
from tests.test_snapshot_export import commit_ids, new_run, open_store


@pytest.mark.databases
def test_the_tally_follows_every_workers_commits_and_replaced_failures(world: World) -> None:
    with open_store(world) as store, open_store(world) as other:
        new_run(store, list(range(1, 41)), total=40)
        new_run(store, list(range(1, 41)), total=40, method="scratchpad")
        tally = ResultTally(store, "r", "baseline")
        assert tally.read() == 0
        commit_ids(store, [1, 2, 3])
        assert tally.read() == 3
        commit_ids(other, [4, 5])  # another worker, its own connection
        commit_ids(store, [6], status="failed")
        assert tally.read() == 6
        commit_ids(store, [6])  # the failure retried: replaced, not a seventh result
        assert tally.read() == 6
        commit_ids(store, [7])
        assert ResultTally(store, "r", "scratchpad").read() == 0  # only its own method's rows
        assert tally.read() == 7 == store.count_results("r", "baseline")


def test_a_tally_within_the_plan_counts_only_its_first_samples(world: World) -> None:
    with open_store(world) as store:
        new_run(store, list(range(1, 41)), total=40)
        tally = ResultTally(store, "r", "baseline", limit=5)
        commit_ids(store, [1, 2, 30])
        assert tally.read() == 2
        commit_ids(store, [3, 31, 5])
        assert tally.read() == 4 == store.count_results("r", "baseline", limit=5)


@pytest.mark.databases
def test_a_row_below_the_newest_id_seen_is_counted_by_the_next_full_count(
    world: World,
) -> None:
    """A PostgreSQL transaction that commits late may hold an id lower than one already read."""
    if world.kind == "sqlite":
        pytest.skip("SQLite's writers take turns: its ids appear in order")
    with open_store(world) as store:
        new_run(store, list(range(1, 41)), total=40)
        commit_ids(store, [1, 2, 3])
        with store.engine.begin() as conn:  # take row 2 out, to put it back "late"
            row = conn.execute(select(RESULT).where(RESULT.c.image_id == 2)).one()._asdict()
            conn.execute(delete(METRIC).where(METRIC.c.result_id == row["id"]))
            conn.execute(delete(RESULT).where(RESULT.c.id == row["id"]))
        tally = ResultTally(store, "r", "baseline")
        assert tally.read() == 2
        commit_ids(store, [4])
        with store.engine.begin() as conn:
            conn.execute(insert(RESULT).values(**row))
        reads = [tally.read() for _ in range(FULL_EVERY)]
        assert reads[0] == 3  # the new row 4, not yet the late one
        assert reads[-1] == 4 == store.count_results("r", "baseline")


def test_a_tally_on_a_store_that_has_no_results_yet(world: World) -> None:
    with open_store(world) as store:
        new_run(store, [1, 2], total=2)
        tally = ResultTally(store, "r", "baseline")
        assert [tally.read(), tally.read()] == [0, 0]
        commit_ids(store, [2])
        assert tally.read() == 1
