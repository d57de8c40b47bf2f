"""Reading the SRC of a merge: refused unless it is a results database at the schema head,
then one read-only snapshot of the merged tables (of some runs, or all with the cache).

Nothing here writes to SRC: no upgrade, no stamp; SQLite is opened as every
reader of the store opens it (a deferred transaction).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Table, select
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from cobra_eval.errors import StoreError
from cobra_eval.store.engine import (
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    mask_url,
    read_only,
    sqlite_path,
)
from cobra_eval.store.repository import (
    CACHE,
    CHECKPOINT,
    CORPUS,
    METRIC,
    PASS,
    PLAN,
    RESULT,
    RUN,
    RUN_METHOD,
)
from cobra_eval.store.scores import DOC_FREQ

#: The tables a merge copies; every other table (work claims, export leases) stays where it is.
MERGED_TABLES = tuple(t.name for t in (
    RUN, RUN_METHOD, PLAN, RESULT, PASS, METRIC, CORPUS, CHECKPOINT, DOC_FREQ, CACHE))  # fmt: skip


@dataclass
class Source:
    """Everything a merge takes from SRC, read in one snapshot."""

    runs: list[dict[str, Any]]
    """run rows (every row here is column -> value, timestamps in UTC)."""
    methods: list[dict[str, Any]]
    """run_method rows."""
    plans: dict[str, list[int]]
    """Image ids of each run's plan, in position order."""
    results: list[dict[str, Any]]
    """sample_result rows, with SRC's ids (passes and metric rows refer to them)."""
    passes: dict[int, list[dict[str, Any]]]
    """sample_pass rows by SRC result id."""
    metrics: dict[int, list[dict[str, Any]]]
    """metric_value rows by SRC result id."""
    corpus: list[dict[str, Any]]
    """corpus_metric rows."""
    checkpoints: list[dict[str, Any]]
    """checkpoint rows."""
    document_frequencies: list[dict[str, Any]]
    """cider_document_frequency rows."""
    cache: list[dict[str, Any]] | None
    """generation_cache rows; None when only some runs are merged."""


def read_source(src_url: str, run_ids: Sequence[str] | None = None) -> Source:
    """SRC's rows of the merged tables (of run_ids only, if given), without writing to SRC."""
    where = mask_url(src_url)
    check_source(src_url)
    base = engine = make_engine(src_url)
    if engine.dialect.name != "sqlite":
        # one snapshot for all the reads, while others may be writing to SRC
        engine = engine.execution_options(isolation_level="REPEATABLE READ")
    try:
        with read_only(engine).connect() as conn, conn.begin():
            return _read(conn, run_ids, where)
    except OperationalError as exc:
        raise StoreError(f"cannot read SRC {where}: {exc.orig}") from None
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read SRC {where}: {exc}") from None
    finally:
        base.dispose()


def check_source(src_url: str) -> None:
    """Refuse a SRC that is missing, empty, or at another schema revision, before any write."""
    where = mask_url(src_url)
    path = sqlite_path(src_url)
    if path is not None and not path.exists():
        raise StoreError(f"no results database at {path} (SRC); nothing was merged or created")
    if path is not None and path.is_dir():
        raise StoreError(f"SRC {path} is a directory, not a database file")
    try:
        revision = current_revision(src_url)
    except OperationalError as exc:
        raise StoreError(f"cannot open SRC {where}: {exc.orig}") from None
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot open SRC {where}: {exc}") from None
    head = head_revision()
    if revision is None:
        raise StoreError(f"SRC {where} is not a cobra_eval results database (it is empty)")
    if revision == head:
        return
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    try:
        known = ScriptDirectory.from_config(alembic_config(src_url)).get_revision(revision)
    except (RevisionError, CommandError):
        known = None
    if known is None:
        raise StoreError(
            f"SRC {where} has schema revision {revision}, newer than this cobra_eval knows "
            f"(head {head}); merge with the cobra_eval that wrote it"
        )
    # SRC is only read, never upgraded: its owner decides when its schema changes
    raise StoreError(
        f"SRC {where} has the older schema revision {revision} (head {head}); upgrade it "
        f"first with: python -m cobra_eval db upgrade --db {_shell_word(src_url)}"
    )


def _read(conn: Connection, run_ids: Sequence[str] | None, where: str) -> Source:
    runs = [portable(r) for r in conn.execute(select(RUN).order_by(RUN.c.id)).mappings()]
    if run_ids is not None:
        have = {r["id"] for r in runs}
        missing = [r for r in dict.fromkeys(run_ids) if r not in have]
        if missing:
            listed = ", ".join(sorted(have)[:10]) or "none"
            raise StoreError(f"SRC {where} has no run {', '.join(missing)} (its runs: {listed})")
        runs = [r for r in runs if r["id"] in set(run_ids)]
    ids = [r["id"] for r in runs]

    def scoped(query: Any, run_column: Any) -> Any:
        return query if run_ids is None else query.where(run_column.in_(ids))

    def rows(table: Table) -> list[dict[str, Any]]:
        query = scoped(select(table), table.c.run_id).order_by(table.c.id)
        return [portable(r) for r in conn.execute(query).mappings()]

    def by_result(table: Table) -> dict[int, list[dict[str, Any]]]:
        query = select(table).join(RESULT, RESULT.c.id == table.c.result_id)
        out: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for r in conn.execute(scoped(query, RESULT.c.run_id).order_by(table.c.id)).mappings():
            out[r["result_id"]].append(dict(r))
        return out

    plans: dict[str, list[int]] = defaultdict(list)
    query = scoped(select(PLAN.c.run_id, PLAN.c.image_id), PLAN.c.run_id)
    for run_id, image_id in conn.execute(query.order_by(PLAN.c.run_id, PLAN.c.position)):
        plans[run_id].append(image_id)
    cache = None
    if run_ids is None:
        query = select(CACHE).order_by(CACHE.c.key)
        cache = [portable(r) for r in conn.execute(query).mappings()]
    return Source(
        runs=runs,
        methods=rows(RUN_METHOD),
        plans=plans,
        results=rows(RESULT),
        passes=by_result(PASS),
        metrics=by_result(METRIC),
        corpus=rows(CORPUS),
        checkpoints=rows(CHECKPOINT),
        document_frequencies=rows(DOC_FREQ),
        cache=cache,
    )


def portable(row: Any) -> dict[str, Any]:
    """A row as plain values, timestamps in UTC (SQLite hands them back without a zone)."""
    return {k: _utc(v) if isinstance(v, datetime) else v for k, v in dict(row).items()}


def _utc(value: datetime) -> datetime:
    # the store writes UTC: a naive timestamp read from SQLite is UTC, and PostgreSQL
    # hands timestamps back in the session's zone
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _shell_word(url: str) -> str:
    path = sqlite_path(url)
    shown = str(path) if path is not None else mask_url(url)
    return f"'{shown}'" if any(c in shown for c in " ?&*$'\"") else shown
