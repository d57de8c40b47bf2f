"""Statements run on SQLite's own cursor store and read exactly what SQLAlchemy's path would."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError

from cobra_eval.store import Store, resolve_url, sqlite_direct
from cobra_eval.store.models import utcnow
from cobra_eval.store.repository import CACHE, CHECKPOINT, RESULT
from cobra_eval.store.result_writer import CommitItem, write_results
from tests.test_snapshot_export import new_run, varied


def raw(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows as SQLite holds them: the stored text, not what SQLAlchemy makes of it."""
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def sqlalchemy_row(item: CommitItem, created_at: datetime) -> dict[str, Any]:
    r = item.result
    return {
        "run_id": "r", "method": "sqlalchemy", "image_id": r.image_id, "status": r.status,
        "error": r.metadata.get("error") if r.status == "failed" else None,
        "reference_captions": r.reference_captions, "generated_caption": r.generated_caption,
        "reasoning_trace": r.reasoning_trace, "metadata": r.metadata, "metrics": r.metrics,
        "scoring": item.scoring, "worker": "w:1", "latency_s": item.latency_s,
        "created_at": created_at,
    }  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store.open(resolve_url(str(tmp_path / "direct.db")))
    new_run(opened, list(range(1, 200)), total=199)
    return opened


def test_results_written_directly_hold_the_bytes_sqlalchemy_writes(
    store: Store, tmp_path: Path
) -> None:
    """Every column of varied results (JSON, None, NaN metrics, unicode, timestamps, floats)."""
    records = varied(nan=True)
    items = [CommitItem(r, latency_s=0.25 * k, scoring={"n": k} if k % 2 else None)
             for k, r in enumerate(records)]  # fmt: skip
    with store.engine.begin() as conn:
        assert write_results(conn, "r", "direct", items, worker="w:1") == [True] * len(items)
        # the same rows through SQLAlchemy's own INSERT, with the same timestamp
        stamp = select(RESULT.c.created_at).where(RESULT.c.method == "direct").limit(1)
        created_at = conn.execute(stamp).scalar_one()
        conn.execute(insert(RESULT), [sqlalchemy_row(item, created_at) for item in items])
    db = tmp_path / "direct.db"
    columns = (
        "image_id, status, error, reference_captions, generated_caption, reasoning_trace, "
        "metadata, metrics, scoring, worker, latency_s, created_at, typeof(created_at)"
    )
    direct = raw(db, f"SELECT {columns} FROM sample_result WHERE method = 'direct' ORDER BY 1")
    through = raw(db, f"SELECT {columns} FROM sample_result WHERE method = 'sqlalchemy' ORDER BY 1")
    assert len(direct) == len(records) and direct == through
    # a result's passes and metric rows came with it
    assert raw(db, "SELECT count(*) FROM sample_pass")[0][0] == sum(
        len(r.metadata.get("passes", [])) for r in records
    )


def test_a_batch_larger_than_one_statement_is_written_whole(store: Store) -> None:
    """More rows than SQLite's parameter limit allows in one INSERT are split, none lost."""
    template = varied(nan=False)[0]
    records = [template.model_copy(update={"image_id": i}) for i in range(1, 200)]
    with store.engine.begin() as conn:
        written = write_results(conn, "r", "baseline", [CommitItem(r) for r in records], worker="w")
    assert written == [True] * 199
    assert store.count_results("r", "baseline") == 199
    assert [r.image_id for r in store.results("r", "baseline")] == list(range(1, 200))


def test_parameters_and_rows_convert_as_with_sqlalchemy(store: Store, tmp_path: Path) -> None:
    """Timestamps and booleans bound in INSERTs and WHERE clauses; rows read back converted."""
    now = utcnow()
    row = {"run_id": "r", "method": "m", "count": 10, "is_final": False, "path": "p",
           "bytes": 5, "sha256": "s", "created_at": now}  # fmt: skip
    with store.engine.begin() as conn:
        sqlite_direct.rows(conn, insert(CHECKPOINT), row)
        conn.execute(insert(CHECKPOINT), {**row, "count": 20})
        cache = sqlite_direct.InsertMany(insert(CACHE), ("key", "output", "created_at"))
        assert cache(conn, [("a", "é", now), ("b", "x", now)]) == []
        conn.execute(insert(CACHE), {"key": "c", "output": "é", "created_at": now})
    stored = raw(tmp_path / "direct.db", "SELECT count, is_final, created_at FROM checkpoint")
    assert stored[0][1:] == stored[1][1:]
    cached = raw(tmp_path / "direct.db", "SELECT key, created_at FROM generation_cache")
    assert {c[1] for c in cached} == {stored[0][2]}
    newer = select(CHECKPOINT.c.count, CHECKPOINT.c.created_at, CHECKPOINT.c.is_final).where(
        CHECKPOINT.c.created_at > now - timedelta(seconds=1), CHECKPOINT.c.is_final.is_(False)
    )
    later = select(CACHE.c.key).where(CACHE.c.created_at > now)
    with store.reader.connect() as conn:
        assert sqlite_direct.rows(conn, newer) == [tuple(r) for r in conn.execute(newer)]
        stored_at = now.replace(tzinfo=None)  # SQLite keeps no zone: UTC, read back naive
        assert sqlite_direct.rows(conn, newer) == [(10, stored_at, False), (20, stored_at, False)]
        assert sqlite_direct.rows(conn, later) == [] == conn.execute(later).all()
        some = select(CACHE.c.output).where(CACHE.c.key.in_(["a", "c", "zz"])).order_by(CACHE.c.key)
        assert sqlite_direct.rows(conn, some) == [("é",), ("é",)]


def test_a_value_shared_by_some_rows_and_not_others_is_stored_for_each_as_its_own(
    store: Store, tmp_path: Path
) -> None:
    """Rows that share a timestamp object, then one that does not, then the shared one again."""
    now = utcnow()
    rows = [("a", "x", now), ("b", "y", now), ("c", "z", now - timedelta(days=1)), ("d", "w", now)]
    cache = sqlite_direct.InsertMany(insert(CACHE), ("key", "output", "created_at"))
    with store.engine.begin() as conn:
        cache(conn, rows)
        conn.execute(
            insert(CACHE),
            [{"key": k.upper(), "output": o, "created_at": t} for k, o, t in rows],
        )
    stored = dict(raw(tmp_path / "direct.db", "SELECT key, created_at FROM generation_cache"))
    assert [stored[k] for k, _, _ in rows] == [stored[k.upper()] for k, _, _ in rows]
    assert len({stored["a"], stored["b"], stored["c"], stored["d"]}) == 2


def test_one_statement_reused_with_other_lists_and_parameters_reads_as_sqlalchemy(
    store: Store,
) -> None:
    """The SQL made for one IN list length and set of parameters is not reused for another."""
    now = utcnow()
    with store.engine.begin() as conn:
        rows = [{"key": k, "output": f"out {k}", "created_at": now + timedelta(seconds=n)}
                for n, k in enumerate("abcdefgh")]  # fmt: skip
        conn.execute(insert(CACHE), rows)
    # an IN list given, a timestamp given or left to the statement's own value, a list held
    query = (
        select(CACHE.c.key, CACHE.c.created_at)
        .where(
            CACHE.c.key.in_(bindparam("keys", expanding=True)),
            CACHE.c.created_at >= bindparam("since", value=now + timedelta(seconds=2)),
            CACHE.c.key.not_in(["d"]),
        )
        .order_by(CACHE.c.key)
    )
    calls = [{"keys": list("abcde")}, {"keys": ["h"]}, {"keys": []}, {"keys": list("abcde")},
             {"keys": list("gfedcba"), "since": now}, {"keys": ["h", "a"], "since": now},
             {"keys": ["h"]}, {"keys": ["a"], "since": now},
             {"keys": list("gfedcba"), "since": now + timedelta(seconds=6)}]  # fmt: skip
    with store.reader.connect() as conn:
        for params in calls:
            expected = [tuple(r) for r in conn.execute(query, params)]
            assert sqlite_direct.rows(conn, query, params) == expected, params
        assert sqlite_direct.rows(conn, query, calls[1]) == [
            ("h", (now + timedelta(seconds=7)).replace(tzinfo=None))
        ]
        assert [k for k, _ in sqlite_direct.rows(conn, query, calls[4])] == list("abcefg")
        # more lengths than one statement keeps shapes for
        for n in range(sqlite_direct.MAX_SHAPES + 8):
            params = {"keys": ["a"] * n + ["h"], "since": now}
            assert sqlite_direct.rows(conn, query, params) == conn.execute(query, params).all()


def test_a_duplicate_row_raises_sqlalchemys_integrity_error(store: Store) -> None:
    """Concurrent workers' commits rely on it: the first row stays, the second is refused."""
    row = {"key": "k", "output": "first", "created_at": utcnow()}
    with store.engine.begin() as conn:
        sqlite_direct.rows(conn, insert(CACHE), row)
    with (
        pytest.raises(IntegrityError, match="UNIQUE constraint failed"),
        store.engine.begin() as conn,
    ):
        sqlite_direct.rows(conn, insert(CACHE), {**row, "output": "second"})
    assert store.cached_outputs(["k"]) == {"k": "first"}
