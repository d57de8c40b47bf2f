"""Scores kept with the results: per-sample statistics, CIDEr-D document frequencies, corpus scores.

Functions on a Store (as in snapshots.py): the metric code hands over plain
values and never sees SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from cobra_eval.store import sqlite_direct
from cobra_eval.store.models import CiderDocumentFrequency, utcnow
from cobra_eval.store.repository import CORPUS, METRIC, PASS, RESULT, Store
from cobra_eval.store.result_writer import bump_revision, metric_rows

DOC_FREQ = CiderDocumentFrequency.__table__  # type: ignore[attr-defined]


@dataclass
class StoredScore:
    """A successful result's final-caption metrics and scoring statistics."""

    metrics: dict[str, Any]
    scoring: dict[str, Any] | None


@dataclass
class ScoreUpdate:
    """New scores of one stored result; None leaves that part as it is."""

    metrics: dict[str, Any]
    scoring: dict[str, Any] | None = None
    pass_metrics: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] | None = None


@dataclass
class CorpusRecord:
    """A set of corpus scores stored together."""

    n_samples: int
    scope: str
    scores: dict[str, float] = field(default_factory=dict)


def stored_scores(
    store: Store,
    run_id: str,
    method: str,
    *,
    since: datetime | None = None,
    other_than: str | None = None,
) -> dict[int, StoredScore]:
    """Metrics and scoring statistics of a method's successful results, by image id.

    since and other_than keep only results committed from that time on by another worker.
    """
    query = select(RESULT.c.image_id, RESULT.c.metrics, RESULT.c.scoring).where(
        RESULT.c.run_id == run_id, RESULT.c.method == method, RESULT.c.status == "ok"
    )
    if since is not None:
        query = query.where(RESULT.c.created_at >= since)
    if other_than is not None:
        query = query.where(RESULT.c.worker != other_than)
    with store.reader.connect() as conn:
        return {r.image_id: StoredScore(r.metrics, r.scoring) for r in conn.execute(query)}


def update_scores(
    store: Store, run_id: str, method: str, updates: Mapping[int, ScoreUpdate]
) -> int:
    """Replace stored scores of these results (and their metric rows) in one transaction."""
    changed = 0
    with store.engine.begin() as conn:
        rows = conn.execute(
            select(RESULT.c.id, RESULT.c.image_id).where(
                RESULT.c.run_id == run_id, RESULT.c.method == method
            )
        ).all()
        for row in rows:
            new = updates.get(row.image_id)
            if new is None:
                continue
            values: dict[str, Any] = {"metrics": new.metrics}
            if new.scoring is not None:
                values["scoring"] = new.scoring
            if new.metadata is not None:
                values["metadata"] = new.metadata
            conn.execute(update(RESULT).where(RESULT.c.id == row.id).values(**values))
            conn.execute(
                delete(METRIC).where(METRIC.c.result_id == row.id, METRIC.c.pass_id.is_(None))
            )
            fresh = metric_rows(row.id, None, new.metrics)
            if new.pass_metrics is not None:
                passes = conn.execute(
                    select(PASS.c.id, PASS.c.pass_index).where(PASS.c.result_id == row.id)
                ).all()
                for p in passes:
                    if p.pass_index >= len(new.pass_metrics):
                        continue
                    pass_values = new.pass_metrics[p.pass_index]
                    conn.execute(update(PASS).where(PASS.c.id == p.id).values(metrics=pass_values))
                    conn.execute(delete(METRIC).where(METRIC.c.pass_id == p.id))
                    fresh += metric_rows(row.id, p.id, pass_values)
            if fresh:
                conn.execute(insert(METRIC), fresh)
            changed += 1
        if changed:
            bump_revision(conn, run_id, method)
    return changed


def record_corpus_metrics(
    store: Store, run_id: str, method: str, scores: Mapping[str, float], *, n: int, scope: str
) -> None:
    """Store corpus-level scores of a method over n samples."""
    if not scores:
        return
    now = utcnow()
    rows = [
        {"run_id": run_id, "method": method, "metric": name, "value": value,
         "n_samples": n, "scope": scope, "created_at": now}
        for name, value in scores.items()
    ]  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(insert(CORPUS), rows)


def latest_corpus_metrics(
    store: Store, run_id: str, method: str, scope: str | None = None
) -> CorpusRecord | None:
    """The newest set of corpus scores of a method (of one scope, if given)."""
    # one transaction: the newest set and its scores from the same snapshot
    with store.reader.connect() as conn, conn.begin():
        return latest_corpus_in(conn, run_id, method, scope)


_NEWEST = (
    select(CORPUS.c.created_at, CORPUS.c.scope, CORPUS.c.n_samples)
    .where(CORPUS.c.run_id == bindparam("run_id"), CORPUS.c.method == bindparam("method"))
    .order_by(CORPUS.c.id.desc())
    .limit(1)
)
_NEWEST_OF_SCOPE = _NEWEST.where(CORPUS.c.scope == bindparam("scope"))
_SET = (
    select(CORPUS.c.metric, CORPUS.c.value)
    .where(
        CORPUS.c.run_id == bindparam("run_id"),
        CORPUS.c.method == bindparam("method"),
        CORPUS.c.created_at == bindparam("created_at"),
        CORPUS.c.scope == bindparam("scope"),
        CORPUS.c.n_samples == bindparam("n_samples"),
    )
    .order_by(CORPUS.c.id)
)


def latest_corpus_in(
    conn: Connection, run_id: str, method: str, scope: str | None = None
) -> CorpusRecord | None:
    """latest_corpus_metrics through a given connection (inside its transaction)."""
    keys = {"run_id": run_id, "method": method}
    if scope is None:
        found = sqlite_direct.rows(conn, _NEWEST, keys)
    else:
        found = sqlite_direct.rows(conn, _NEWEST_OF_SCOPE, {**keys, "scope": scope})
    if not found:
        return None
    created_at, newest_scope, n_samples = found[0]
    newest = {"created_at": created_at, "scope": newest_scope, "n_samples": n_samples}
    scores = dict(sqlite_direct.rows(conn, _SET, {**keys, **newest}))
    return CorpusRecord(n_samples, newest_scope, scores)


def stored_document_frequency(store: Store, run_id: str, n_images: int) -> bytes | None:
    """The stored CIDEr-D document frequencies of a run's planned set of n_images."""
    query = select(DOC_FREQ.c.data).where(
        DOC_FREQ.c.run_id == run_id, DOC_FREQ.c.n_images == n_images
    )
    with store.reader.connect() as conn:
        return conn.execute(query).scalar_one_or_none()


def save_document_frequency(
    store: Store, run_id: str, *, n_images: int, n_ngrams: int, data: bytes, sha256: str
) -> None:
    """Keep the document frequencies of a planned set (a second writer's copy is identical)."""
    try:
        with store.engine.begin() as conn:
            conn.execute(
                insert(DOC_FREQ).values(
                    run_id=run_id, n_images=n_images, n_ngrams=n_ngrams, data=data,
                    sha256=sha256, rescored={}, created_at=utcnow(),
                )
            )  # fmt: skip
    except IntegrityError:
        pass


def note_rescored(store: Store, run_id: str, n_images: int, method: str, count: int) -> None:
    """Record that count earlier samples of a method were rescored with these frequencies."""
    with store.engine.begin() as conn:
        done = conn.execute(
            select(DOC_FREQ.c.id, DOC_FREQ.c.rescored).where(
                DOC_FREQ.c.run_id == run_id, DOC_FREQ.c.n_images == n_images
            )
        ).first()
        if done is None:
            return
        rescored = {**(done.rescored or {}), method: count}
        conn.execute(update(DOC_FREQ).where(DOC_FREQ.c.id == done.id).values(rescored=rescored))
