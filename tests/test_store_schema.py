"""The database: migrations create the schema, newer schemas are refused, SQLite settings."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlmodel import SQLModel

from cobra_eval.errors import StoreError
from cobra_eval.store import Store, sqlite_direct
from cobra_eval.store.checkpoint_io import ResultRecord
from cobra_eval.store.engine import head_revision, open_engine, resolve_url
from cobra_eval.store.repository import PLAN_CHUNK, CommitItem

TABLES = {
    "run",
    "run_method",
    "planned_sample",
    "sample_result",
    "sample_pass",
    "cider_document_frequency",
    "sample_claim",
    "export_lease",
    "metric_value",
    "corpus_metric",
    "checkpoint",
    "generation_cache",
    "alembic_version",
}


def test_opening_an_empty_file_creates_every_table_at_head(tmp_path: Path) -> None:
    db = tmp_path / "new" / "cobra_eval.db"
    Store.open(resolve_url(str(db))).close()
    con = sqlite3.connect(db)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == TABLES
    assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == head_revision()
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_models_and_migrations_agree(tmp_path: Path) -> None:
    engine = open_engine(resolve_url(str(tmp_path / "x.db")))
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
        )
    engine.dispose()
    assert diff == []


def test_connections_have_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    engine = open_engine(resolve_url(str(tmp_path / "x.db")))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_a_database_from_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    Store.open(resolve_url(str(db))).close()
    con = sqlite3.connect(db)
    con.execute("UPDATE alembic_version SET version_num = 'ffff_from_the_future'")
    con.commit()
    con.execute("PRAGMA journal_mode=DELETE")  # no WAL side files, so the file is the whole DB
    con.close()
    before = db.read_bytes()
    with pytest.raises(
        StoreError, match="ffff_from_the_future, which is newer than this cobra_eval"
    ):
        Store.open(resolve_url(str(db)))
    assert db.read_bytes() == before
    assert not Path(str(db) + "-wal").exists()


def test_a_file_that_is_not_a_database_is_refused_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    db.write_text("these are my notes, not a database\n" * 20)
    before = db.read_bytes()
    with pytest.raises(StoreError, match="is not a SQLite database"):
        Store.open(resolve_url(str(db)))
    assert db.read_bytes() == before


def test_a_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE customers (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a cobra_eval results database"):
        Store.open(resolve_url(str(db)))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "sqlite:///{out}/cobra_eval.db"),
        ("{tmp}/team.db", "sqlite:///{tmp}/team.db"),
        (
            "postgresql+psycopg://alice:secret@db.example/cobra",
            "postgresql+psycopg://alice:secret@db.example/cobra",
        ),
    ],
)
def test_db_flag_takes_a_path_or_a_url(tmp_path: Path, given: str | None, expected: str) -> None:
    out = tmp_path / "results"
    arg = given.format(tmp=tmp_path) if given else None
    assert resolve_url(arg, out) == expected.format(out=out.resolve(), tmp=tmp_path.resolve())


def test_db_commands_report_and_upgrade(tmp_path: Path, cli) -> None:
    db = tmp_path / "x.db"
    result = cli("db", "current", "--db", str(db))
    assert result.exit_code == 0
    assert f"schema empty (head {head_revision()}, needs `db upgrade`)" in result.output
    assert not db.exists()
    result = cli("db", "upgrade", "--db", str(db))
    assert result.exit_code == 0, result.output
    assert f"schema empty -> {head_revision()} (head)" in result.output
    result = cli("db", "current", "--db", str(db))
    assert f"schema {head_revision()} (head {head_revision()}, up to date)" in result.output


def test_passwords_in_urls_are_masked_in_errors(cli) -> None:
    result = cli("runs", "--db", "postgresql+psycopg://alice:hunter2@127.0.0.1:1/nodb")
    assert result.exit_code == 1
    assert "hunter2" not in result.output
    assert "alice:***@127.0.0.1" in result.output


def test_a_database_of_an_older_schema_is_upgraded_keeping_its_rows(tmp_path: Path) -> None:
    from alembic import command

    from cobra_eval.store.engine import alembic_config, make_engine

    db = tmp_path / "old.db"
    url = resolve_url(str(db))
    engine = make_engine(url)
    cfg = alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    engine.dispose()
    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO run (id, created_at, created_by, tool_version, config, fingerprint, status) "
        "VALUES ('old_run', '2025-01-01 00:00:00', 'me@here', '0.0.1', '{}', 'abc', 'finished')"
    )
    con.commit()
    con.close()
    with Store.open(url) as store:
        assert [r.id for r in store.runs()] == ["old_run"]
    con = sqlite3.connect(db)
    assert con.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision(),)
    assert con.execute("SELECT COUNT(*) FROM generation_cache").fetchone() == (0,)


def test_durability_full_makes_sqlite_sync_every_commit(tmp_path: Path) -> None:
    from sqlalchemy import text

    for durability, expected in (("normal", 1), ("full", 2)):
        db = tmp_path / f"{durability}.db"
        store = Store.open(resolve_url(str(db)), durability=durability)
        with store, store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == expected
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_a_plan_longer_than_one_insert_holds_every_id_once_in_its_order(tmp_path: Path) -> None:
    # a plan is inserted PLAN_CHUNK rows a statement: none may be lost or doubled between them
    ids = random.Random(3).sample(range(10**6), 2 * PLAN_CHUNK + 7)
    db = tmp_path / "cobra_eval.db"
    with Store.open(resolve_url(str(db))) as store:
        store.create_run("r", {"model": {"name": "m"}}, "f")
        store.ensure_plan("r", ids)
        # extended and two ids swapped: the earlier rows move, the new ones follow
        again = [ids[1], ids[0], *ids[2:], 5_000_001, 5_000_002]
        store.ensure_plan("r", again)
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT position, image_id FROM planned_sample ORDER BY position")
        assert rows.fetchall() == list(enumerate(again))
    finally:
        con.close()


def test_a_plan_extended_narrowed_or_reordered_keeps_every_id_once_in_its_place(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cobra_eval.db"

    def plan() -> list[tuple[int, int]]:
        con = sqlite3.connect(db)
        try:
            rows = con.execute("SELECT position, image_id FROM planned_sample ORDER BY position")
            return rows.fetchall()
        finally:
            con.close()

    with Store.open(resolve_url(str(db))) as store:
        store.create_run("r", {"model": {"name": "m"}}, "f")
        store.ensure_plan("r", [7, 3, 9])
        store.ensure_plan("r", [7, 3, 9, 4, 1])  # a run resumed with more samples
        assert plan() == [(0, 7), (1, 3), (2, 9), (3, 4), (4, 1)]
        store.ensure_plan("r", [7, 3])  # fewer: what is planned beyond stays after them
        assert plan() == [(0, 7), (1, 3), (2, 9), (3, 4), (4, 1)]
        store.ensure_plan("r", [7, 3, 9, 4, 1, 8])
        assert plan() == [(0, 7), (1, 3), (2, 9), (3, 4), (4, 1), (5, 8)]
        store.ensure_plan("r", [3, 7, 2])  # another order: its ids first, the rest after
        assert plan() == [(0, 3), (1, 7), (2, 2), (3, 9), (4, 4), (5, 1), (6, 8)]


def test_a_selection_planned_again_after_other_orders_gets_its_own_order_back(
    tmp_path: Path,
) -> None:
    # a resume of the selection last planned skips reading the plan: every other order,
    # and ids added after it by an import, must make the next resume read it again
    db = tmp_path / "cobra_eval.db"
    with Store.open(resolve_url(str(db))) as store:
        store.create_run("r", {"model": {"name": "m"}}, "f")

        def planned() -> list[int]:
            with store.engine.connect() as conn:
                rows = conn.execute(text("SELECT image_id FROM planned_sample ORDER BY position"))
                return [image_id for (image_id,) in rows]

        for ids in ([7, 3, 9], [3, 7, 9], [7, 3, 9], [7, 3], [3, 7], [7, 3, 9]):
            store.ensure_plan("r", ids)
            assert planned() == ids + [i for i in (7, 3, 9) if i not in ids]
        with store.engine.begin() as conn:
            store.append_to_plan(conn, "r", [4])  # an imported result's sample
        store.ensure_plan("r", [7, 3, 9])
        assert planned() == [7, 3, 9, 4]
        store.ensure_plan("r", [9, 3, 7])
        assert planned() == [9, 3, 7, 4]
        # more samples after an import's: the imported one keeps a place after them
        store.ensure_plan("r", [9, 3])
        with store.engine.begin() as conn:
            store.append_to_plan(conn, "r", [5])
        store.ensure_plan("r", [9, 3, 7, 4, 6])
        assert planned() == [9, 3, 7, 4, 6, 5]


def test_a_resume_of_the_selection_last_planned_reads_no_planned_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = random.Random(5).sample(range(10**6), 500)
    statements: list[str] = []
    read = sqlite_direct.rows

    def rows(conn: Any, statement: Any, params: Any = None) -> list[tuple[Any, ...]]:
        statements.append(str(statement))
        return read(conn, statement, params)

    monkeypatch.setattr(sqlite_direct, "rows", rows)
    with Store.open(resolve_url(str(tmp_path / "cobra_eval.db"))) as store:
        store.create_run("r", {"model": {"name": "m"}}, "f")
        store.ensure_plan("r", ids)
        statements.clear()
        store.ensure_plan("r", ids)
        store.ensure_plan("r", [*ids, 10**7, 10**7 + 1])  # resumed with more samples
        unchanged = list(statements)
        store.ensure_plan("r", ids[::-1])
        with store.engine.connect() as conn:
            rows = conn.execute(text("SELECT image_id FROM planned_sample ORDER BY position"))
            assert [i for (i,) in rows] == [*ids[::-1], 10**7, 10**7 + 1]
    # the same selection or more of it: nothing read; another order: read to be reordered
    assert not [s for s in unchanged if "planned_sample.image_id" in s], unchanged
    assert [s for s in statements if "planned_sample.image_id" in s], statements


def test_a_runs_methods_are_listed_in_start_order_with_or_without_their_counts(
    tmp_path: Path,
) -> None:
    # the resume checks configs with run_methods (no count of a 100k run's results); the
    # progress views count: both must describe the same methods
    failed = {"status": "failed", "error": "boom", "passes": []}
    with Store.open(resolve_url(str(tmp_path / "cobra_eval.db"))) as store:
        store.create_run("r", {"model": {"name": "m"}}, "f")
        store.ensure_plan("r", [1, 2, 3])
        for method, total in (("scratchpad", 3), ("baseline", 2)):
            store.ensure_method("r", method, config={"name": method}, fingerprint=method[:4],
                                settings={"batch_size": 2}, total=total)  # fmt: skip
        records = [
            ResultRecord(image_id=1, reference_captions=["a"], generated_caption="a"),
            ResultRecord(
                image_id=2, reference_captions=["b"], generated_caption="", metadata=failed
            ),
        ]
        store.commit_results("r", "baseline", [CommitItem(r) for r in records], worker="w:1")
        infos = store.run_methods("r")
        progress = store.method_progress("r")
        assert [m.method for m in infos] == ["scratchpad", "baseline"]
        assert [(p.done, p.failed) for p in progress] == [(0, 0), (2, 1)]
        assert [(m.config, m.fingerprint, m.settings, m.total_planned) for m in infos] == [
            ({"name": "scratchpad"}, "scra", {"batch_size": 2}, 3),
            ({"name": "baseline"}, "base", {"batch_size": 2}, 2),
        ]
        for info, counted in zip(infos, progress, strict=True):
            assert {**vars(info), "done": counted.done, "failed": counted.failed} == vars(counted)
        assert store.run_methods("r", "baseline") == [infos[1]]
        assert store.run_methods("r", "llava_cot") == store.run_methods("other") == []
