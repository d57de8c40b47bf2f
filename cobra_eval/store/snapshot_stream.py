"""A checkpoint document streamed from one consistent read of the database.

The bytes equal `dumps()` of the whole pydantic document (test_snapshot_export builds it
independently), but nothing proportional to the number of results is held: rows are read in
chunks, their JSON columns are read as text and parsed with orjson (rows from
our own database need no validation), each chunk is serialised once and
re-indented into place, and the caller writes (and hashes) it as it comes.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Text, and_, cast, exists, func, literal, null, select

from cobra_eval import __version__
from cobra_eval.config import SETTINGS_KEY
from cobra_eval.errors import StoreError
from cobra_eval.store.checkpoint_io import (
    CheckpointFile,
    CheckpointInfo,
    CheckpointMeta,
    CorpusMetrics,
    ResultRecord,
    dump_json,
    dumps,
    loads_exact,
)
from cobra_eval.store.repository import PLAN, RESULT, RUN, RUN_METHOD, Store
from cobra_eval.store.scores import latest_corpus_in

#: Results read, serialised and written at a time (~0.2 MB of JSON, ~1.5 MB as objects).
CHUNK_ROWS = 250
#: The end of a serialised document whose results are empty: the results go there.
_EMPTY_RESULTS = b"[]\n}\n"

_COLUMNS = (
    RESULT.c.id,
    RESULT.c.image_id,
    RESULT.c.generated_caption,
    RESULT.c.reasoning_trace,
    # the three JSON columns as one JSON array text, parsed by one orjson call (SQLAlchemy's
    # JSON type would parse each with the stdlib: most of the export's time at 10k results)
    (
        literal("[")
        + cast(RESULT.c.reference_captions, Text)
        + literal(",")
        + cast(RESULT.c.metadata, Text)
        + literal(",")
        + cast(RESULT.c.metrics, Text)
        + literal("]")
    ).label("json_columns"),
)
_PLAIN_METRICS = {float, type(None)}


@dataclass(frozen=True)
class SnapshotDocument:
    """A run/method as read in one transaction: the document minus its results, and those."""

    head: CheckpointFile
    count: int
    results: Iterator[bytes]

    def chunks(self) -> Iterator[bytes]:
        """The whole document, as dumps() writes it, in pieces."""
        top = dumps(self.head)
        assert top.endswith(_EMPTY_RESULTS)
        opened = False
        for chunk in self.results:
            yield (b",\n" if opened else top[: -len(_EMPTY_RESULTS)] + b"[\n") + chunk
            opened = True
        yield b"\n  ]\n}\n" if opened else top


@contextmanager
def open_snapshot(
    store: Store, run_id: str, method: str, *, is_checkpoint: bool, when: datetime
) -> Iterator[SnapshotDocument]:
    """The run/method's document, read in one transaction that lasts while it is consumed.

    Counts, checkpoint_info, corpus scores and results come from one snapshot of
    the database (SQLite: one read transaction in WAL; PostgreSQL: REPEATABLE
    READ), so results other workers commit meanwhile are in none or all of them.
    """
    with store.reader.connect() as conn:
        if conn.dialect.name != "sqlite":
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            head = _head(conn, store, run_id, method, is_checkpoint=is_checkpoint, when=when)
            count = head.checkpoint_info.processed_count
            yield SnapshotDocument(head, count, _result_chunks(conn, run_id, method, count))


def _head(
    conn: Connection,
    store: Store,
    run_id: str,
    method: str,
    *,
    is_checkpoint: bool,
    when: datetime,
) -> CheckpointFile:
    progress = conn.execute(
        select(RUN_METHOD.c.config, RUN_METHOD.c.settings, RUN_METHOD.c.total_planned).where(
            RUN_METHOD.c.run_id == run_id, RUN_METHOD.c.method == method
        )
    ).first()
    run_config = conn.execute(select(RUN.c.config).where(RUN.c.id == run_id)).scalar()
    if progress is None or run_config is None:
        raise StoreError(f"run {run_id!r} has no method {method!r} in {store.display}")
    total = progress.total_planned
    mine = and_(RESULT.c.run_id == run_id, RESULT.c.method == method)
    count = conn.execute(select(func.count()).where(mine)).scalar_one()
    in_plan = conn.execute(
        select(func.count())
        .select_from(PLAN.join(RESULT, _result_of(method)))
        .where(PLAN.c.run_id == run_id, PLAN.c.position < total)
    ).scalar_one()
    corpus = _latest_corpus(conn, run_id, method)
    if corpus is not None:
        # only scores of exactly these results: older ones would describe another set
        failed = conn.execute(
            select(func.count()).where(mine, RESULT.c.status != "ok")
        ).scalar_one()
        if corpus.n_samples != count - failed:
            corpus = None
    return CheckpointFile(
        meta=CheckpointMeta(
            timestamp=when.isoformat(timespec="seconds"),
            config={**run_config, "method": progress.config, SETTINGS_KEY: progress.settings},
            method=method,
            samples_processed=count,
            total_samples=total,
            is_checkpoint=is_checkpoint,
            run_id=run_id,
            tool_version=__version__,
        ),
        checkpoint_info=CheckpointInfo(
            processed_count=count, remaining_count=max(total - in_plan, 0)
        ),
        corpus_metrics=corpus,
        results=[],
    )


def _latest_corpus(conn: Connection, run_id: str, method: str) -> CorpusMetrics | None:
    """The newest corpus scores, inside this transaction (its snapshot)."""
    newest = latest_corpus_in(conn, run_id, method)
    if newest is None:
        return None
    return CorpusMetrics(n_samples=newest.n_samples, scope=newest.scope, scores=newest.scores)


def _result_chunks(conn: Connection, run_id: str, method: str, expected: int) -> Iterator[bytes]:
    """The results in plan order (Store.results' order), serialised CHUNK_ROWS at a time."""
    # driven by the plan's (run_id, position) index: rows come in order, nothing is sorted
    planned = (
        select(PLAN.c.position, *_COLUMNS)
        .select_from(PLAN.join(RESULT, _result_of(method)))
        .where(PLAN.c.run_id == run_id)
        .order_by(PLAN.c.position)
    )
    rows = conn.execute(planned, execution_options={"yield_per": CHUNK_ROWS})
    streamed = yield from _encoded(_ties_by_id(rows))
    if streamed < expected:
        # results whose sample is not in the plan: after the planned ones, by id
        unplanned = (
            select(null().label("position"), *_COLUMNS)
            .where(
                RESULT.c.run_id == run_id,
                RESULT.c.method == method,
                ~exists().where(PLAN.c.run_id == run_id, PLAN.c.image_id == RESULT.c.image_id),
            )
            .order_by(RESULT.c.id)
        )
        rows = conn.execute(unplanned, execution_options={"yield_per": CHUNK_ROWS})
        streamed += yield from _encoded(iter(rows))
    if streamed != expected:
        # one snapshot cannot disagree with itself: a database without snapshot reads
        raise StoreError(
            f"the results of {method} changed during the export ({expected} counted, "
            f"{streamed} read); nothing was written, the next checkpoint tries again"
        )


def _result_of(method: str) -> Any:
    """Join condition: a planned sample's result of this method."""
    return and_(
        RESULT.c.run_id == PLAN.c.run_id,
        RESULT.c.image_id == PLAN.c.image_id,
        RESULT.c.method == method,
    )


def _ties_by_id(rows: Iterable[Any]) -> Iterator[Any]:
    """Rows ordered by position, then result id, as Store.results orders them.

    A plan's positions are unique, so rows pass straight through; were two equal,
    sorting by id in SQL would make SQLite sort the whole run instead of reading
    the plan's index in order.
    """
    group: list[Any] = []
    for row in rows:
        if group and row[0] != group[0][0]:
            yield from group if len(group) == 1 else sorted(group, key=lambda r: r[1])
            group = []
        group.append(row)
    yield from group if len(group) <= 1 else sorted(group, key=lambda r: r[1])


def _encoded(rows: Iterator[Any]) -> Generator[bytes, None, int]:
    """Rows serialised CHUNK_ROWS at a time; returns how many there were."""
    count = 0
    while True:
        with _gc_paused():
            chunk = list(itertools.islice(rows, CHUNK_ROWS))
            if not chunk:
                return count
            data = encode_results([_record(row) for row in chunk])
        count += len(chunk)
        yield data


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for one chunk.

    A result is ~40 dicts and lists, acyclic and freed by reference counting when
    its chunk is written; collector passes over them (and over every long-lived
    object of the process: a loaded model has many) took half the export's time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _record(row: Any) -> dict[str, Any]:
    """One result as export writes it, from a row read with _COLUMNS (after the position)."""
    _, _, image_id, caption, reasoning, json_columns = row
    references, metadata, metrics = loads_exact(json_columns)
    record = {
        "image_id": image_id,
        "reference_captions": references,
        "generated_caption": caption,
        "reasoning_trace": reasoning,
        "metadata": metadata,
        "metrics": metrics,
    }
    if type(metrics) is not dict or not set(map(type, metrics.values())) <= _PLAIN_METRICS:
        # metrics pydantic would convert (an int becomes a float): its serialiser decides
        return ResultRecord.model_construct(**record).model_dump(mode="json")
    return record


def encode_results(records: Sequence[dict[str, Any]]) -> bytes:
    """Results as the items of the document's results array: indented 4, comma-separated."""
    data = dump_json(list(records))
    # b'[\n  {\n    ...\n  },\n  {...}\n]': items at 2 spaces -> 4; JSON strings hold no
    # raw newline (orjson escapes it), so every b"\n" is between lines of the layout
    return b"  " + data[2:-2].replace(b"\n", b"\n  ")
