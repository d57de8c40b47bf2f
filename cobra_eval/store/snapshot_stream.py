"""A checkpoint document streamed from one consistent read of the database.

The bytes equal `dumps()` of the whole pydantic document (test_snapshot_export builds it
independently), but nothing proportional to the number of results is held: rows are read in
chunks, their JSON columns are read as text and parsed with orjson (rows from
our own database need no validation), each chunk is serialised once and
re-indented into place, and the caller writes (and hashes) it as it comes.

A run's checkpoints grow by a few results each: given the previous snapshot it
wrote (`WrittenItems`), a writer copies that file's result bytes and serialises
only the results committed since, when the database shows the copied ones are
unchanged. Otherwise everything is serialised, as from scratch.
"""

from __future__ import annotations

import gc
import operator
import os
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import (
    BindParameter,
    Connection,
    Text,
    and_,
    bindparam,
    cast,
    exists,
    func,
    literal,
    null,
    select,
)

from cobra_eval import __version__
from cobra_eval.config import SETTINGS_KEY
from cobra_eval.errors import StoreError
from cobra_eval.store import sqlite_direct
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
from cobra_eval.store.repository import COUNT_IN_PLAN, PLAN, RESULT, RUN, RUN_METHOD, Store
from cobra_eval.store.scores import latest_corpus_in
from cobra_eval.store.tally import Since, results_since

#: Results read, serialised and written at a time (~0.2 MB of JSON, ~1.5 MB as objects).
CHUNK_ROWS = 250
#: The end of a serialised document whose results are empty: the results go there.
_EMPTY_RESULTS = b"[]\n}\n"
#: What follows the last result of a document that has results.
_RESULTS_END = b"\n  ]\n}\n"
#: Bytes of an earlier snapshot copied at a time.
_COPY_BYTES = 1 << 20

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
class WrittenItems:
    """Where a written snapshot's results lie in its file, and which stored results they are.

    Handed to the next open_snapshot of the same run and method, whose document
    then copies these bytes while the database shows those results unchanged:
    the method's revision is the same (nothing rescored, replaced or merged), no
    result up to last_id was added or removed, and every newer result comes
    after last_position in the plan.
    """

    path: Path
    #: byte offsets of the first result and just past the last one
    start: int
    end: int
    count: int
    last_position: int
    last_id: int
    revision: int
    #: (inode, size, mtime in ns) of the file as written: a file changed since is not copied
    file_id: tuple[int, int, int]
    #: of count: the failed results, the plan's length then, and the results within it
    failed: int
    total: int
    in_plan: int


@dataclass
class _Seen:
    """What a document's results were, as they streamed: for the WrittenItems of its file."""

    count: int = 0
    last_position: int = -1
    last_id: int = -1
    #: results outside the plan (after the planned ones): no later document copies these
    unplanned: bool = False


@dataclass
class SnapshotDocument:
    """A run/method as read in one transaction: the document minus its results, and those."""

    head: CheckpointFile
    counts: _Counts
    results: Iterator[bytes]
    #: the earlier file whose results open this document's, and how many they are
    reused_from: tuple[IO[bytes], WrittenItems] | None = None
    _seen: _Seen = field(default_factory=_Seen)
    _prefix: int = 0

    @property
    def count(self) -> int:
        """The method's results in this document."""
        return self.counts.count

    @property
    def reused(self) -> int:
        """How many results were copied from the earlier snapshot instead of serialised."""
        return self.reused_from[1].count if self.reused_from is not None else 0

    def chunks(self) -> Iterator[bytes]:
        """The whole document, as dumps() writes it, in pieces."""
        top = dumps(self.head)
        assert top.endswith(_EMPTY_RESULTS)
        opening = top[: -len(_EMPTY_RESULTS)] + b"[\n"
        self._prefix = len(opening)
        opened = False
        if self.reused_from is not None:
            handle, items = self.reused_from
            yield opening
            handle.seek(items.start)
            left = items.end - items.start
            while left > 0:
                piece = handle.read(min(left, _COPY_BYTES))
                if not piece:
                    raise StoreError(f"{items.path} got shorter while it was copied")
                left -= len(piece)
                yield piece
            opened = True
        for chunk in self.results:
            yield (b",\n" if opened else opening) + chunk
            opened = True
        yield _RESULTS_END if opened else top

    def written_items(self, path: Path, size: int) -> WrittenItems | None:
        """Where this document's results lie in the file it was written to (None: nowhere).

        Call after the file is complete; None when it has no results, or results
        outside the plan (which later documents place differently).
        """
        seen = self._seen
        if self.count == 0 or seen.unplanned or seen.count + self.reused != self.count:
            return None
        last = self.reused_from[1] if self.reused_from is not None else None
        stat = os.stat(path)
        return WrittenItems(
            path=path,
            start=self._prefix,
            end=size - len(_RESULTS_END),
            count=self.count,
            last_position=max(seen.last_position, last.last_position if last else -1),
            last_id=max(seen.last_id, last.last_id if last else -1),
            revision=self.counts.revision,
            file_id=(stat.st_ino, stat.st_size, stat.st_mtime_ns),
            failed=self.counts.failed,
            total=self.counts.total,
            in_plan=self.counts.in_plan,
        )


@contextmanager
def open_snapshot(
    store: Store,
    run_id: str,
    method: str,
    *,
    is_checkpoint: bool,
    when: datetime,
    earlier: WrittenItems | None = None,
) -> Iterator[SnapshotDocument]:
    """The run/method's document, read in one transaction that lasts while it is consumed.

    Counts, checkpoint_info, corpus scores and results come from one snapshot of
    the database (SQLite: one read transaction in WAL; PostgreSQL: REPEATABLE
    READ), so results other workers commit meanwhile are in none or all of them.
    With earlier (this run and method's last snapshot), its results' bytes are
    copied when they still hold; the document is the same either way.
    """
    with store.reader.connect() as conn, ExitStack() as files:
        if conn.dialect.name != "sqlite":
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            head, counts, grown = _head(
                conn, store, run_id, method, is_checkpoint=is_checkpoint, when=when,
                earlier=earlier,
            )  # fmt: skip
            count = counts.count
            seen = _Seen()
            # the earlier file's results open this one's if every result since is planned after
            reusable = None
            if earlier is not None and grown is not None and grown.after == grown.count:
                reusable = _reusable(earlier)
            if reusable is not None and earlier is not None:
                copied: tuple[IO[bytes], WrittenItems] | None = (
                    files.enter_context(reusable),
                    earlier,
                )
                since = _encoded(_planned_rows(conn, run_id, method, after=earlier), seen)
                results = _checked(since, seen, count - earlier.count, method)
            else:
                copied, results = None, _result_chunks(conn, run_id, method, count, seen)
            try:
                yield SnapshotDocument(head, counts, results, copied, seen)
            finally:
                # a consumer that stopped early (a full disk) leaves a cursor open: an open
                # SQLite statement pins its snapshot, and the pooled connection's next write
                # would fail as "locked"
                results.close()


@dataclass(frozen=True)
class _Counts:
    """A method's results as one document sees them."""

    count: int
    failed: int
    #: the plan's length for the method (total_planned), and the results within it
    total: int
    in_plan: int
    revision: int


def _grown(
    conn: Connection, keys: dict[str, Any], total: int, revision: int, earlier: WrittenItems | None
) -> Since | None:
    """What was added since earlier, when nothing it holds changed (else None: count it all).

    Reads only the new rows (and one index count), so an export a run makes every
    few samples does not count a 100k-result run again.
    """
    if earlier is None or earlier.revision != revision:
        return None
    # nothing up to its last result was added or removed (the revision covers changes in place)
    if sqlite_direct.scalar(conn, _UP_TO, {**keys, "last_id": earlier.last_id}) != earlier.count:
        return None
    return results_since(
        conn, keys["run_id"], keys["method"], earlier.last_id, total=total,
        last_position=earlier.last_position,
    )  # fmt: skip


def _reusable(earlier: WrittenItems) -> IO[bytes] | None:
    """The earlier snapshot's file, open, if it is still the file that was written."""
    try:
        handle = open(earlier.path, "rb")  # noqa: SIM115 (closed by the caller's ExitStack)
    except OSError:
        return None  # pruned or moved: serialised again
    stat = os.fstat(handle.fileno())
    if (stat.st_ino, stat.st_size, stat.st_mtime_ns) != earlier.file_id:
        handle.close()
        return None
    return handle


def _checked(
    chunks: Iterator[bytes], seen: _Seen, expected: int, method: str
) -> Generator[bytes, None, None]:
    """Chunks of the results after the copied ones; raises if they were not all there."""
    yield from chunks
    if seen.count != expected:
        raise _changed_during_export(method, expected, seen.count)


def _changed_during_export(method: str, counted: int, read: int) -> StoreError:
    # one snapshot cannot disagree with itself: a database without snapshot reads
    return StoreError(
        f"the results of {method} changed during the export ({counted} counted, {read} "
        "read); nothing was written, the next checkpoint tries again"
    )


# Built once with bound parameters: building a statement costs more than running it here,
# and a run exports often.
_RUN_ID: BindParameter[str] = bindparam("run_id")
_METHOD: BindParameter[str] = bindparam("method")
_MINE = and_(RESULT.c.run_id == _RUN_ID, RESULT.c.method == _METHOD)
_RESULT_OF_PLANNED = and_(
    RESULT.c.run_id == PLAN.c.run_id,
    RESULT.c.image_id == PLAN.c.image_id,
    RESULT.c.method == _METHOD,
)
_FAILED = RESULT.c.status != "ok"
_PROGRESS = select(
    RUN_METHOD.c.config,
    RUN_METHOD.c.settings,
    RUN_METHOD.c.total_planned,
    RUN_METHOD.c.revision,
    select(RUN.c.config).where(RUN.c.id == _RUN_ID).scalar_subquery().label("run_config"),
).where(RUN_METHOD.c.run_id == _RUN_ID, RUN_METHOD.c.method == _METHOD)
_COUNTS = select(
    select(func.count()).where(_MINE).scalar_subquery().label("count"),
    select(func.count()).where(_MINE, _FAILED).scalar_subquery().label("failed"),
)
_UP_TO = select(func.count()).where(_MINE, RESULT.c.id <= bindparam("last_id"))
_PLANNED_AFTER = and_(
    PLAN.c.position > bindparam("last_position"), RESULT.c.id > bindparam("last_id")
)
# driven by the plan's (run_id, position) index: rows come in order, nothing is sorted
_PLANNED = (
    select(PLAN.c.position, *_COLUMNS)
    .select_from(PLAN.join(RESULT, _RESULT_OF_PLANNED))
    .where(PLAN.c.run_id == _RUN_ID)
    .order_by(PLAN.c.position)
)
_PLANNED_SINCE = _PLANNED.where(_PLANNED_AFTER)


def _head(
    conn: Connection,
    store: Store,
    run_id: str,
    method: str,
    *,
    is_checkpoint: bool,
    when: datetime,
    earlier: WrittenItems | None = None,
) -> tuple[CheckpointFile, _Counts, Since | None]:
    """The document without its results, its counts, and what was added since earlier."""
    keys = {"run_id": run_id, "method": method}
    found = sqlite_direct.rows(conn, _PROGRESS, keys)
    config, settings, total, revision, run_config = found[0] if found else (None,) * 5
    if run_config is None:
        raise StoreError(f"run {run_id!r} has no method {method!r} in {store.display}")
    grown = _grown(conn, keys, total, revision, earlier)
    if grown is not None and earlier is not None:
        count, failed = earlier.count + grown.count, earlier.failed + grown.failed
    else:
        count, failed = conn.execute(_COUNTS, keys).one()
    if grown is not None and earlier is not None and earlier.total == total:
        in_plan = earlier.in_plan + grown.in_plan
    else:
        in_plan = conn.execute(COUNT_IN_PLAN, {**keys, "total": total}).scalar_one()
    corpus = _latest_corpus(conn, run_id, method)
    # only scores of exactly these results: older ones would describe another set
    if corpus is not None and corpus.n_samples != count - failed:
        corpus = None
    if isinstance(run_config, str | bytes):  # a scalar subquery's JSON comes back as text
        run_config = loads_exact(run_config)
    document = CheckpointFile(
        meta=CheckpointMeta(
            timestamp=when.isoformat(timespec="seconds"),
            config={**run_config, "method": config, SETTINGS_KEY: settings},
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
    return document, _Counts(count, failed, total, in_plan, revision), grown


def _latest_corpus(conn: Connection, run_id: str, method: str) -> CorpusMetrics | None:
    """The newest corpus scores, inside this transaction (its snapshot)."""
    newest = latest_corpus_in(conn, run_id, method)
    if newest is None:
        return None
    return CorpusMetrics(n_samples=newest.n_samples, scope=newest.scope, scores=newest.scores)


def _planned_rows(
    conn: Connection, run_id: str, method: str, *, after: WrittenItems | None = None
) -> Generator[list[Any], None, None]:
    """The planned samples' results in plan order (after an earlier snapshot's last ones).

    In blocks of about CHUNK_ROWS rows: each block is parsed and serialised at once.
    """
    keys: dict[str, Any] = {"run_id": run_id, "method": method}
    query = _PLANNED
    if after is not None:
        query = _PLANNED_SINCE
        keys |= {"last_position": after.last_position, "last_id": after.last_id}
    blocks = sqlite_direct.stream(conn, query, keys, size=CHUNK_ROWS)
    try:
        yield from _ties_by_id(blocks)
    finally:
        blocks.close()


def _result_chunks(
    conn: Connection, run_id: str, method: str, expected: int, seen: _Seen
) -> Generator[bytes, None, None]:
    """The results in plan order (Store.results' order), serialised CHUNK_ROWS at a time."""
    streamed = yield from _encoded(_planned_rows(conn, run_id, method), seen)
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
        before = seen.count
        try:
            streamed += yield from _encoded(rows.partitions(CHUNK_ROWS), seen)
        finally:
            rows.close()
        seen.unplanned = seen.count > before
    if streamed != expected:
        raise _changed_during_export(method, expected, streamed)


def _ties_by_id(blocks: Iterable[list[Any]]) -> Iterator[list[Any]]:
    """Blocks of rows ordered by position, then result id, as Store.results orders them.

    A plan's positions are unique, so rows pass straight through; were two equal,
    sorting by id in SQL would make SQLite sort the whole run instead of reading
    the plan's index in order. A block's rows at its last position are held for
    the next block, which may hold more of them.
    """
    held: list[Any] = []
    for block in blocks:
        rows = held + block if held else block
        last = rows[-1][0]
        cut = len(rows) - 1
        while cut > 0 and rows[cut - 1][0] == last:
            cut -= 1
        if cut:
            yield _sorted_ties(rows[:cut])
        held = rows[cut:]
    if held:
        yield _sorted_ties(held)


def _sorted_ties(rows: list[Any]) -> list[Any]:
    """Rows that come by position with those of one position by result id."""
    positions = [row[0] for row in rows]
    if all(map(operator.ne, positions, positions[1:])):
        return rows
    # equal positions are adjacent: sorting by (position, id) orders only them
    return sorted(rows, key=operator.itemgetter(0, 1))


def _encoded(blocks: Iterator[Sequence[Any]], seen: _Seen) -> Generator[bytes, None, int]:
    """Blocks of rows serialised a block at a time, noted in seen; returns how many there were."""
    count = 0
    try:
        while True:
            with _gc_paused():
                block = next(blocks, None)
                if not block:
                    return count
                data = encode_results(_records(block))
            count += len(block)
            seen.count += len(block)
            if block[-1][0] is not None:  # planned rows come by position
                seen.last_position = max(seen.last_position, block[-1][0])
            seen.last_id = max(seen.last_id, max(row[1] for row in block))
            yield data
    finally:
        if isinstance(blocks, Generator):
            blocks.close()  # its cursor, at once (not when collected)


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


def _records(block: Sequence[Any]) -> list[dict[str, Any]]:
    """Results as export writes them, from rows read with _COLUMNS (after the position)."""
    # the block's JSON columns parsed by one call: per row, the call cost as much as parsing
    parsed = loads_exact("[" + ",".join([row[5] for row in block]) + "]")
    records = []
    for row, (references, metadata, metrics) in zip(block, parsed, strict=True):
        record = {
            "image_id": row[2],
            "reference_captions": references,
            "generated_caption": row[3],
            "reasoning_trace": row[4],
            "metadata": metadata,
            "metrics": metrics,
        }
        if type(metrics) is not dict or not set(map(type, metrics.values())) <= _PLAIN_METRICS:
            # metrics pydantic would convert (an int becomes a float): its serialiser decides
            record = ResultRecord.model_construct(**record).model_dump(mode="json")
        records.append(record)
    return records


def encode_results(records: Sequence[dict[str, Any]]) -> bytes:
    """Results as the items of the document's results array: indented 4, comma-separated."""
    data = dump_json(list(records))
    # b'[\n  {\n    ...\n  },\n  {...}\n]': items at 2 spaces -> 4; JSON strings hold no
    # raw newline (orjson escapes it), so every b"\n" is between lines of the layout
    return b"  " + data[2:-2].replace(b"\n", b"\n  ")
