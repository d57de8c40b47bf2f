"""Writing results: a sample's row, its passes and its narrow metric rows, in bulk.

One code path for everything that stores results: a run's batch, an import of
a 10,000-result file, a single test row. Inside the caller's transaction, a few
statements per call whatever the number of results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from cobra_eval.store import sqlite_direct
from cobra_eval.store.checkpoint_io import ResultRecord
from cobra_eval.store.models import MetricValue, RunMethod, SamplePass, SampleResult, utcnow

RESULT = SampleResult.__table__  # type: ignore[attr-defined]
RUN_METHOD = RunMethod.__table__  # type: ignore[attr-defined]
PASS = SamplePass.__table__  # type: ignore[attr-defined]
METRIC = MetricValue.__table__  # type: ignore[attr-defined]

#: Up to this many results, existing rows are looked up by image id; above, for the method.
_BY_ID_LIMIT = 500
#: Rows per DELETE ... IN (...): well inside every database's bound-parameter limit.
_DELETE_BATCH = 500
_METRIC_COLUMNS = ("result_id", "pass_id", "name", "value")

# built once with bound parameters: a run commits a batch at a time, and building these
# statements cost more than running them
_MINE = (RESULT.c.run_id == bindparam("run_id"), RESULT.c.method == bindparam("method"))
_EXISTING_ALL = select(RESULT.c.id, RESULT.c.image_id, RESULT.c.status).where(*_MINE)
#: by how many results are written: a few are looked up by image id, many by the method
_EXISTING = {
    True: _EXISTING_ALL.where(RESULT.c.image_id.in_(bindparam("ids", expanding=True))),
    False: _EXISTING_ALL,
}
# RETURNING in any row order (matched by key): many rows go in one statement (InsertMany
# on SQLite, SQLAlchemy's insertmanyvalues elsewhere)
_INSERT_RESULT = insert(RESULT).returning(RESULT.c.image_id, RESULT.c.id)
_INSERT_PASS = insert(PASS).returning(PASS.c.result_id, PASS.c.pass_index, PASS.c.id)
_RESULT_COLUMNS = (
    "run_id", "method", "image_id", "status", "error", "reference_captions", "generated_caption",
    "reasoning_trace", "metadata", "metrics", "scoring", "worker", "latency_s", "created_at",
)  # fmt: skip
_PASS_COLUMNS = (
    "result_id", "pass_index", "name", "prompt", "raw_output", "caption", "reasoning",
    "parse_status", "metrics",
)  # fmt: skip
_WRITE_RESULTS = sqlite_direct.InsertMany(_INSERT_RESULT, _RESULT_COLUMNS)
_WRITE_PASSES = sqlite_direct.InsertMany(_INSERT_PASS, _PASS_COLUMNS)
_WRITE_METRICS = sqlite_direct.InsertMany(insert(METRIC), _METRIC_COLUMNS)


def bump_revision(conn: Connection, run_id: str | Sequence[str], method: str | None = None) -> None:
    """Mark stored results as changed other than by appending (every method, with None).

    A checkpoint writer copies the bytes of the results it wrote before only
    while the revision it read then is unchanged (snapshot_stream).
    """
    runs = [run_id] if isinstance(run_id, str) else list(run_id)
    stmt = update(RUN_METHOD).where(RUN_METHOD.c.run_id.in_(runs))
    if method is not None:
        stmt = stmt.where(RUN_METHOD.c.method == method)
    conn.execute(stmt.values(revision=RUN_METHOD.c.revision + 1))


@dataclass(frozen=True)
class CommitItem:
    """One sample to commit: its result, generation latency and corpus statistics."""

    result: ResultRecord
    latency_s: float | None = None
    scoring: dict[str, Any] | None = None


def write_results(
    conn: Connection, run_id: str, method: str, items: Sequence[CommitItem], *, worker: str
) -> list[bool]:
    """Insert results with their passes and metric rows; a failed row is replaced.

    Returns, per item, whether it was written: False (and nothing written) when
    a successful row already exists. The database is the truth, and a sample is
    never committed twice.
    """
    ids = [item.result.image_id for item in items]
    existing = {
        image_id: (id_, status) for id_, image_id, status in _existing(conn, run_id, method, ids)
    }
    fresh: list[CommitItem] = []
    replaced: list[int] = []
    for item in items:
        old = existing.get(item.result.image_id)
        if old is not None:
            if old[1] == "ok":
                continue
            replaced.append(old[0])
        fresh.append(item)
    if replaced:
        bump_revision(conn, run_id, method)
    for start in range(0, len(replaced), _DELETE_BATCH):
        chunk = replaced[start : start + _DELETE_BATCH]
        conn.execute(delete(METRIC).where(METRIC.c.result_id.in_(chunk)))
        conn.execute(delete(PASS).where(PASS.c.result_id.in_(chunk)))
        conn.execute(delete(RESULT).where(RESULT.c.id.in_(chunk)))
    written = {item.result.image_id for item in fresh}
    if not fresh:
        return [False] * len(items)
    now = utcnow()
    result_rows = [
        (
            run_id, method, r.image_id, r.status,
            r.metadata.get("error") if r.status == "failed" else None,
            r.reference_captions, r.generated_caption, r.reasoning_trace, r.metadata, r.metrics,
            item.scoring, worker, item.latency_s, now,
        )
        for item in fresh
        for r in (item.result,)
    ]  # fmt: skip
    # image ids are unique in a run and method
    id_of: dict[int, int] = dict(_WRITE_RESULTS(conn, result_rows))
    result_ids = [id_of[item.result.image_id] for item in fresh]
    passes = [_passes(item.result) for item in fresh]
    pass_rows = [
        (result_id, index, *row)
        for result_id, found in zip(result_ids, passes, strict=True)
        for index, row, _ in found
    ]
    pass_id: dict[tuple[int, int], int] = {}
    if pass_rows:
        found_ids = _WRITE_PASSES(conn, pass_rows)
        pass_id = {(result_id, index): id_ for result_id, index, id_ in found_ids}
    # per result: its own metrics, then each pass's
    metrics: list[tuple[int, int | None, str, float]] = []
    for result_id, item, found in zip(result_ids, fresh, passes, strict=True):
        metrics += _metric_values(result_id, None, item.result.metrics)
        for index, _, item_metrics in found:
            metrics += _metric_values(result_id, pass_id[result_id, index], item_metrics)
    if metrics:
        # plain numbers and strings: on SQLite, nothing of SQLAlchemy's per-row handling
        # (half of a 10,000-result import's time, 140,000 metric rows, when it ran them)
        _WRITE_METRICS(conn, metrics)
    return [image_id in written for image_id in ids]


def _existing(
    conn: Connection, run_id: str, method: str, ids: list[int]
) -> Sequence[tuple[int, int, str]]:
    """(id, image_id, status) of the method's rows for these image ids (or all of them)."""
    # a batch looks up its own samples; an import of thousands reads the method's rows once
    few = len(ids) <= _BY_ID_LIMIT
    keys = {"run_id": run_id, "method": method, "ids": ids}
    return sqlite_direct.rows(conn, _EXISTING[few], keys)


def write_result(
    conn: Connection,
    run_id: str,
    method: str,
    result: ResultRecord,
    *,
    worker: str,
    latency_s: float | None,
    scoring: dict[str, Any] | None = None,
) -> bool:
    """write_results for one result."""
    item = CommitItem(result, latency_s, scoring)
    return write_results(conn, run_id, method, [item], worker=worker)[0]


def metric_rows(result_id: int, pass_id: int | None, metrics: Any) -> list[dict[str, Any]]:
    """metric_value rows of a result's (or a pass's) numeric metrics."""
    return [
        dict(zip(_METRIC_COLUMNS, row, strict=True))
        for row in _metric_values(result_id, pass_id, metrics)
    ]


def _metric_values(
    result_id: int, pass_id: int | None, metrics: Any
) -> list[tuple[int, int | None, str, float]]:
    """(result_id, pass_id, name, value) of numeric metrics.

    NaN has no row: metric_value.value is NOT NULL, and a NaN (stored as NULL by
    SQLite) would fail the whole commit.
    """
    if not isinstance(metrics, dict):
        return []
    return [
        (result_id, pass_id, str(name), float(value))
        for name, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    ]


def _passes(result: ResultRecord) -> list[tuple[int, tuple[Any, ...], Any]]:
    """(index, sample_pass columns from name on, metrics) of each pass in a result's metadata."""
    items = result.metadata.get("passes")
    if not isinstance(items, list):
        return []
    out = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        metrics = item.get("metrics")
        row = (
            str(item.get("name", f"pass{index + 1}")),
            str(item.get("prompt", "")),
            str(item.get("raw_output", "")),
            str(item.get("caption", "")),
            str(item.get("reasoning", "")),
            str(item.get("parse_status", "ok")),
            metrics if isinstance(metrics, dict) else {},
        )
        out.append((index, row, metrics))
    return out
