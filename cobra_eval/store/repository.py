"""All reads and writes of the results database, each in one short transaction.

Core SQL on the SQLModel tables: a per-sample commit is a handful of INSERTs,
and the ORM's unit-of-work would cost more than the writes themselves.
"""

from __future__ import annotations

import array
import hashlib
import itertools
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from cobra_eval import __version__
from cobra_eval.errors import StoreError
from cobra_eval.store import result_writer, sqlite_direct
from cobra_eval.store.checkpoint_io import ResultRecord
from cobra_eval.store.engine import (
    mask_url,
    open_engine,
    read_only,
    sqlite_path,
    user_at_host,
)
from cobra_eval.store.models import (
    Checkpoint,
    CorpusMetric,
    GenerationCache,
    MetricValue,
    PlannedSample,
    Run,
    RunMethod,
    SamplePass,
    SampleResult,
    utcnow,
)
from cobra_eval.store.result_writer import CommitItem

RUN = Run.__table__  # type: ignore[attr-defined]
RUN_METHOD = RunMethod.__table__  # type: ignore[attr-defined]
PLAN = PlannedSample.__table__  # type: ignore[attr-defined]
RESULT = SampleResult.__table__  # type: ignore[attr-defined]
PASS = SamplePass.__table__  # type: ignore[attr-defined]
METRIC = MetricValue.__table__  # type: ignore[attr-defined]
CHECKPOINT = Checkpoint.__table__  # type: ignore[attr-defined]
CORPUS = CorpusMetric.__table__  # type: ignore[attr-defined]
CACHE = GenerationCache.__table__  # type: ignore[attr-defined]
#: Planned rows inserted per statement when a plan is made.
PLAN_CHUNK = 5_000
# statements a run executes per batch or per checkpoint, built once with bound parameters
_RECORD_CHECKPOINT = insert(CHECKPOINT)
#: a method's results, ok or failed
COUNT_RESULTS = select(func.count()).where(
    RESULT.c.run_id == bindparam("run_id"), RESULT.c.method == bindparam("method")
)
#: results of samples among the plan's first `total` positions
COUNT_IN_PLAN = (
    select(func.count())
    .select_from(
        PLAN.join(
            RESULT,
            and_(
                RESULT.c.run_id == PLAN.c.run_id,
                RESULT.c.image_id == PLAN.c.image_id,
                RESULT.c.method == bindparam("method"),
            ),
        )
    )
    .where(PLAN.c.run_id == bindparam("run_id"), PLAN.c.position < bindparam("total"))
)
_PLANNED_PLACES = (
    select(PLAN.c.image_id, PLAN.c.position)
    .where(PLAN.c.run_id == bindparam("run_id"))
    .order_by(PLAN.c.position)
)
#: the run's plan digest and the plan's last position (-1 when empty)
_PLAN_STATE = select(
    select(RUN.c.plan_digest).where(RUN.c.id == bindparam("run_id")).scalar_subquery(),
    select(func.coalesce(func.max(PLAN.c.position), -1))
    .where(PLAN.c.run_id == bindparam("run_id"))
    .scalar_subquery(),
)
_LAST_CHECKPOINT = select(func.coalesce(func.max(CHECKPOINT.c.count), 0)).where(
    CHECKPOINT.c.run_id == bindparam("run_id"),
    CHECKPOINT.c.method == bindparam("method"),
    CHECKPOINT.c.is_final.is_(False),
)
_CACHED = select(CACHE.c.key, CACHE.c.output).where(
    CACHE.c.key.in_(bindparam("keys", expanding=True))
)


class Upsert:
    """An INSERT ... ON CONFLICT statement (SQLite, PostgreSQL), built once per dialect.

    Building one cost more than running it, and a run executes them per batch.
    """

    def __init__(self, table: Any, on_conflict: Callable[[Any], Any]):
        self.table, self.on_conflict = table, on_conflict
        self._built: dict[str, Any] = {}

    def __call__(self, conn: Connection) -> Any:
        """The statement for this connection's dialect."""
        dialect = conn.dialect.name
        if dialect not in self._built:
            insert_of = postgresql.insert if dialect == "postgresql" else sqlite.insert
            self._built[dialect] = self.on_conflict(insert_of(self.table))
        return self._built[dialect]


# a key another worker cached first keeps its output: the cache is complete
_CACHE_INSERT = Upsert(CACHE, lambda insert: insert.on_conflict_do_nothing(index_elements=["key"]))
_PLAN_WRITE = sqlite_direct.InsertMany(insert(PLAN), ("run_id", "position", "image_id"))
_CACHE_WRITE = sqlite_direct.InsertMany(_CACHE_INSERT, ("key", "output", "created_at"))


@dataclass(frozen=True)
class RunInfo:
    """A run as read from the database."""

    id: str
    created_at: datetime
    created_by: str
    tool_version: str
    config: dict[str, Any]
    fingerprint: str
    status: str


def _run_info(row: Any) -> RunInfo:
    # the plan's digest is the store's own bookkeeping, not part of what a run is
    return RunInfo(**{field.name: row[field.name] for field in fields(RunInfo)})


@dataclass(frozen=True)
class MethodInfo:
    """One method of a run, as started: its config, plan length and status."""

    run_id: str
    method: str
    config: dict[str, Any]
    fingerprint: str
    settings: dict[str, Any]
    total_planned: int
    status: str
    updated_at: datetime


@dataclass(frozen=True)
class MethodProgress(MethodInfo):
    """Progress of one method of a run: its info and the samples with a result."""

    done: int
    failed: int


def _run_methods_query(run_id: str, method: str | None) -> Select[Any]:
    """A run's method rows (or one's), in the order they were started."""
    query = select(RUN_METHOD).where(RUN_METHOD.c.run_id == run_id).order_by(RUN_METHOD.c.id)
    return query if method is None else query.where(RUN_METHOD.c.method == method)


def _method_info(row: Any) -> MethodInfo:
    return MethodInfo(**{field.name: row[field.name] for field in fields(MethodInfo)})


def plan_digest(ordered_ids: Sequence[int]) -> str:
    """The ids' count and the SHA-256 of them in order: equal digests, equal lists."""
    packed = array.array("q", ordered_ids).tobytes()
    return f"{len(ordered_ids)}:{hashlib.sha256(packed).hexdigest()}"


def _insert_planned(conn: Connection, rows: Iterable[tuple[str, int, int]]) -> None:
    """Insert planned (run_id, position, image_id) rows PLAN_CHUNK at a time: a 100,000-sample
    plan's rows built at once held about 60 MB."""
    rows = iter(rows)
    while chunk := list(itertools.islice(rows, PLAN_CHUNK)):
        # many rows a statement: SQLAlchemy's executemany took 110 ms for a resume's 1,000
        _PLAN_WRITE(conn, chunk)


class Store:
    """A results database: runs, plans, results, checkpoints."""

    def __init__(self, engine: Engine, url: str):
        self.engine = engine
        self.reader = read_only(engine)
        self.url = url

    @classmethod
    def open(cls, url: str, *, create: bool = True, durability: str = "normal") -> Store:
        """Open a database by SQLAlchemy URL, upgrading its schema to head.

        With create=False a missing SQLite file is an error instead of a new database.
        """
        path = sqlite_path(url)
        if not create and path is not None and not path.exists():
            raise StoreError(
                f"no results database at {path} (nothing has run there yet; "
                "check --output_dir or --db)"
            )
        return cls(open_engine(url, durability=durability), url)

    def close(self) -> None:
        """Release every connection."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def display(self) -> str:
        """The URL as it may be shown to people (password masked)."""
        return mask_url(self.url)

    # -- runs -------------------------------------------------------------

    def get_run(self, run_id: str) -> RunInfo | None:
        """The run with this id, if any."""
        with self.reader.connect() as conn:
            row = conn.execute(select(RUN).where(RUN.c.id == run_id)).mappings().first()
        return _run_info(row) if row else None

    def runs(self, fingerprint: str | None = None) -> list[RunInfo]:
        """Runs, newest first; only those with this run-level fingerprint if given."""
        query = select(RUN).order_by(RUN.c.created_at.desc(), RUN.c.id.desc())
        if fingerprint is not None:
            query = query.where(RUN.c.fingerprint == fingerprint)
        with self.reader.connect() as conn:
            return [_run_info(row) for row in conn.execute(query).mappings()]

    def create_run(self, run_id: str, config: dict[str, Any], fingerprint: str) -> RunInfo:
        """Create a run; the id must be new."""
        row = {
            "id": run_id,
            "created_at": utcnow(),
            "created_by": user_at_host(),
            "tool_version": __version__,
            "config": config,
            "fingerprint": fingerprint,
            "status": "running",
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(RUN).values(**row))
        except IntegrityError:
            raise StoreError(f"a run named {run_id!r} already exists") from None
        return _run_info(row)

    def unused_run_id(self, base: str) -> str:
        """base, or base_2, base_3, ... whichever is not taken yet."""
        with self.reader.connect() as conn:
            taken = set(conn.execute(select(RUN.c.id).where(RUN.c.id.like(f"{base}%"))).scalars())
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}_{n}"
        return candidate

    def set_run_status(self, run_id: str, status: str) -> None:
        """running | finished | interrupted."""
        with self.engine.begin() as conn:
            conn.execute(update(RUN).where(RUN.c.id == run_id).values(status=status))

    # -- methods of a run ---------------------------------------------------

    def run_methods(self, run_id: str, method: str | None = None) -> list[MethodInfo]:
        """Every method of a run (or one), in the order they were started; nothing counted.

        method_progress counts each method's results too: 20-35 ms at 100,000.
        """
        with self.reader.connect() as conn:
            rows = conn.execute(_run_methods_query(run_id, method)).mappings().all()
        return [_method_info(r) for r in rows]

    def method_progress(self, run_id: str, method: str | None = None) -> list[MethodProgress]:
        """Progress of every method of a run (or one), in the order they were started."""
        done = (
            select(
                RESULT.c.method,
                func.count().label("done"),
                func.sum(case((RESULT.c.status == "failed", 1), else_=0)).label("failed"),
            )
            .where(RESULT.c.run_id == run_id)
            .group_by(RESULT.c.method)
            .subquery()
        )
        query = (
            _run_methods_query(run_id, method)
            .add_columns(func.coalesce(done.c.done, 0).label("done"), done.c.failed)
            .outerjoin(done, done.c.method == RUN_METHOD.c.method)
        )
        with self.reader.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            MethodProgress(**vars(_method_info(r)), done=r["done"], failed=int(r["failed"] or 0))
            for r in rows
        ]

    def workers(self, run_id: str) -> dict[str, int]:
        """Samples each worker (user@host:pid) committed to a run."""
        query = (
            select(RESULT.c.worker, func.count())
            .where(RESULT.c.run_id == run_id)
            .group_by(RESULT.c.worker)
            .order_by(RESULT.c.worker)
        )
        with self.reader.connect() as conn:
            return {worker: int(n) for worker, n in conn.execute(query).all()}

    def ensure_method(
        self,
        run_id: str,
        method: str,
        *,
        config: dict[str, Any],
        fingerprint: str,
        settings: dict[str, Any],
        total: int,
    ) -> None:
        """Create the run's method row, or record a new target total for it."""
        # workers starting together may both try to create it: the loser updates it instead
        _retry_on_conflict(
            lambda: self._ensure_method(run_id, method, config, fingerprint, settings, total)
        )

    def _ensure_method(
        self,
        run_id: str,
        method: str,
        config: dict[str, Any],
        fingerprint: str,
        settings: dict[str, Any],
        total: int,
    ) -> None:
        now = utcnow()
        with self.engine.begin() as conn:
            exists = conn.execute(
                select(RUN_METHOD.c.id).where(
                    RUN_METHOD.c.run_id == run_id, RUN_METHOD.c.method == method
                )
            ).first()
            if exists:
                conn.execute(
                    update(RUN_METHOD)
                    .where(RUN_METHOD.c.id == exists.id)
                    .values(
                        total_planned=total,
                        settings=settings,
                        status="running",
                        updated_at=now,
                        finished_at=None,
                    )
                )
            else:
                conn.execute(
                    insert(RUN_METHOD).values(
                        run_id=run_id,
                        method=method,
                        config=config,
                        fingerprint=fingerprint,
                        settings=settings,
                        total_planned=total,
                        status="running",
                        started_at=now,
                        updated_at=now,
                    )
                )
            conn.execute(update(RUN).where(RUN.c.id == run_id).values(status="running"))

    def set_method_status(self, run_id: str, method: str, status: str) -> None:
        """running | finished | interrupted; finished also stamps finished_at."""
        now = utcnow()
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if status == "finished":
            values["finished_at"] = now
        with self.engine.begin() as conn:
            conn.execute(
                update(RUN_METHOD)
                .where(RUN_METHOD.c.run_id == run_id, RUN_METHOD.c.method == method)
                .values(**values)
            )

    # -- the plan -------------------------------------------------------------

    def ensure_plan(self, run_id: str, ordered_ids: Sequence[int]) -> None:
        """Make positions 0..n-1 of the plan hold these ids (earlier entries may move)."""
        _retry_on_conflict(lambda: self._ensure_plan(run_id, ordered_ids))

    def _ensure_plan(self, run_id: str, ordered_ids: Sequence[int]) -> None:
        digest = plan_digest(ordered_ids)
        with self.engine.begin() as conn:
            stored, last = conn.execute(_PLAN_STATE, {"run_id": run_id}).one()
            # the digest of the plan's first positions is written here each time they change,
            # and every other writer of the plan appends after its last position: a resume of
            # the same selection, or of more samples, reads two values, not 100,000 rows
            if stored == digest:
                return
            known = int(stored.partition(":")[0]) if stored else -1
            if (
                last == known - 1 < len(ordered_ids) - 1
                and plan_digest(ordered_ids[:known]) == stored
            ):
                # the plan is the selection's first `known`, nothing after them: the rest of
                # the selection (its ids are unique) is not planned
                start, planned = known, set()
            else:
                start, planned = 0, self._reconcile_plan(conn, run_id, ordered_ids)
            # the selection's ids not planned yet: their places were left free for them
            _insert_planned(conn, ((run_id, pos, image_id)
                                   for pos, image_id in enumerate(ordered_ids[start:], start)
                                   if image_id not in planned))  # fmt: skip
            conn.execute(update(RUN).where(RUN.c.id == run_id).values(plan_digest=digest))

    def _reconcile_plan(
        self, conn: Connection, run_id: str, ordered_ids: Sequence[int]
    ) -> set[int]:
        """Read the plan, give the ids it shares with ordered_ids their places in it (the
        others keep places after it); the ids it holds."""
        # plain tuples, in plan order: a resumed 100k run's plan read as Row objects
        # into a dict, then moved, took 0.2 s where it is usually unchanged
        placed = sqlite_direct.rows(conn, _PLANNED_PLACES, {"run_id": run_id})
        known = [image_id for image_id, _ in placed]
        common = min(len(known), len(ordered_ids))
        if known[:common] != list(ordered_ids[:common]) or [
            position for _, position in placed
        ] != list(range(len(placed))):
            # unless plan and selection begin alike with the plan at positions 0..n-1 (the
            # selection's rest then goes after it, what is planned beyond it stays after it)
            self._move_planned(conn, run_id, ordered_ids, dict(placed))
        return set(known)

    @staticmethod
    def _move_planned(
        conn: Connection, run_id: str, ordered_ids: Sequence[int], existing: dict[int, int]
    ) -> None:
        """Give planned ids their places in ordered_ids; the others keep a place after it."""
        wanted = set(ordered_ids)
        # ids known only from an import, not in this selection, keep a place after it
        extra = sorted((pos, i) for i, pos in existing.items() if i not in wanted)
        target = {image_id: pos for pos, image_id in enumerate(ordered_ids)}
        target.update({image_id: len(ordered_ids) + k for k, (_, image_id) in enumerate(extra)})
        moves = [
            {"b_id": image_id, "b_pos": target[image_id]}
            for image_id, pos in existing.items()
            if target[image_id] != pos
        ]
        if moves:
            conn.execute(
                update(PLAN)
                .where(PLAN.c.run_id == run_id, PLAN.c.image_id == bindparam("b_id"))
                .values(position=bindparam("b_pos")),
                moves,
            )
            # results change places in the exports: no earlier snapshot's bytes hold
            result_writer.bump_revision(conn, run_id)

    def append_to_plan(self, conn: Connection, run_id: str, image_ids: Iterable[int]) -> None:
        """Add ids not yet planned at the end of the plan (inside the caller's transaction)."""
        existing = set(
            conn.execute(select(PLAN.c.image_id).where(PLAN.c.run_id == run_id)).scalars()
        )
        start = conn.execute(
            select(func.coalesce(func.max(PLAN.c.position) + 1, 0)).where(PLAN.c.run_id == run_id)
        ).scalar_one()

        def new() -> Iterator[int]:
            for image_id in image_ids:
                if image_id not in existing:
                    existing.add(image_id)
                    yield image_id

        _insert_planned(conn, ((run_id, start + k, image_id) for k, image_id in enumerate(new())))

    def count_results(self, run_id: str, method: str, limit: int | None = None) -> int:
        """Samples of a method with a result row (ok or failed), within plan positions < limit."""
        keys = {"run_id": run_id, "method": method, "total": limit}
        query = COUNT_RESULTS if limit is None else COUNT_IN_PLAN
        with self.reader.connect() as conn:
            return conn.execute(query, keys).scalar_one()

    def planned_beyond(self, run_id: str, count: int) -> bool:
        """Whether the run's plan holds samples after its first `count` (an earlier
        invocation's selection was longer, or an import or merge added some)."""
        # one step of the (run, position) index; counting the plan read 100,000 entries
        query = select(exists().where(PLAN.c.run_id == run_id, PLAN.c.position >= count))
        with self.reader.connect() as conn:
            return bool(conn.execute(query).scalar_one())

    def parse_counts(self, run_id: str, method: str) -> tuple[int, int]:
        """Successful results whose caption needed a parse fallback, and those left empty."""
        status = func.coalesce(RESULT.c.metadata["parse_status"].as_string(), "ok")
        query = select(
            func.coalesce(func.sum(case((status.not_in(["ok", "empty"]), 1), else_=0)), 0),
            func.coalesce(func.sum(case((status == "empty", 1), else_=0)), 0),
        ).where(RESULT.c.run_id == run_id, RESULT.c.method == method, RESULT.c.status == "ok")
        with self.reader.connect() as conn:
            fallbacks, empty = conn.execute(query).one()
        return int(fallbacks), int(empty)

    def failed_ids(self, run_id: str, method: str) -> set[int]:
        """Image ids whose stored result is a failure (retried on resume)."""
        query = select(RESULT.c.image_id).where(
            RESULT.c.run_id == run_id, RESULT.c.method == method, RESULT.c.status == "failed"
        )
        with self.reader.connect() as conn:
            return set(conn.execute(query).scalars())

    # -- results ------------------------------------------------------------

    def commit_result(
        self,
        run_id: str,
        method: str,
        result: ResultRecord,
        *,
        worker: str,
        latency_s: float | None,
        scoring: dict[str, Any] | None = None,
    ) -> bool:
        """Commit one sample in its own transaction; False if a successful row already existed."""
        item = CommitItem(result, latency_s, scoring)
        return self.commit_results(run_id, method, [item], worker=worker)[0]

    def commit_results(
        self, run_id: str, method: str, items: Sequence[CommitItem], *, worker: str
    ) -> list[bool]:
        """Commit samples that came into being together, in one transaction.

        False for a sample whose successful row already existed. When another
        worker committed one of them meanwhile, the others are committed one by one.
        """
        try:
            with self.engine.begin() as conn:
                return result_writer.write_results(conn, run_id, method, items, worker=worker)
        except IntegrityError:
            if len(items) > 1:
                return [self.commit_result(run_id, method, i.result, worker=worker,
                                           latency_s=i.latency_s, scoring=i.scoring)
                        for i in items]  # fmt: skip
            # only a row another worker committed between our check and insert may explain it
            if self._has_ok_result(run_id, method, items[0].result.image_id):
                return [False]
            raise

    def _has_ok_result(self, run_id: str, method: str, image_id: int) -> bool:
        query = select(RESULT.c.id).where(
            RESULT.c.run_id == run_id,
            RESULT.c.method == method,
            RESULT.c.image_id == image_id,
            RESULT.c.status == "ok",
        )
        with self.reader.connect() as conn:
            return conn.execute(query).first() is not None

    def results(
        self, run_id: str, method: str, *, only: Collection[int] | None = None
    ) -> Iterator[ResultRecord]:
        """A method's results in plan order, as they appear in exports (only: of these ids)."""
        position = (
            select(PLAN.c.position)
            .where(PLAN.c.run_id == RESULT.c.run_id, PLAN.c.image_id == RESULT.c.image_id)
            .scalar_subquery()
        )
        query = (
            select(
                RESULT.c.image_id,
                RESULT.c.reference_captions,
                RESULT.c.generated_caption,
                RESULT.c.reasoning_trace,
                RESULT.c.metadata,
                RESULT.c.metrics,
            )
            .where(RESULT.c.run_id == run_id, RESULT.c.method == method)
            .order_by(func.coalesce(position, 2**62), RESULT.c.id)
        )
        if only is not None:
            query = query.where(RESULT.c.image_id.in_(sorted(only)))
        with self.reader.connect() as conn:
            for row in conn.execute(query):
                yield ResultRecord.model_construct(
                    image_id=row.image_id,
                    reference_captions=row.reference_captions,
                    generated_caption=row.generated_caption,
                    reasoning_trace=row.reasoning_trace,
                    metadata=row.metadata,
                    metrics=row.metrics,
                )

    def last_checkpoint_count(self, run_id: str, method: str) -> int:
        """The sample count of the newest periodic checkpoint recorded (0 if none)."""
        with self.reader.connect() as conn:
            keys = {"run_id": run_id, "method": method}
            return int(sqlite_direct.scalar(conn, _LAST_CHECKPOINT, keys))

    def cached_outputs(self, keys: Sequence[str]) -> dict[str, str]:
        """Cached generations for these keys (missing keys are absent)."""
        if not keys:
            return {}
        with self.reader.connect() as conn:
            return dict(sqlite_direct.rows(conn, _CACHED, {"keys": sorted(set(keys))}))

    def cache_outputs(self, outputs: dict[str, str]) -> None:
        """Remember generations; a key already present keeps its first output."""
        if not outputs:
            return
        now = utcnow()
        rows = [(key, text, now) for key, text in outputs.items()]
        with self.engine.begin() as conn:
            _CACHE_WRITE(conn, rows)

    def record_checkpoint(
        self,
        run_id: str,
        method: str,
        *,
        count: int,
        path: str,
        size: int,
        sha256: str,
        is_final: bool,
    ) -> None:
        """Remember an exported JSON file."""
        row = {"run_id": run_id, "method": method, "count": count, "is_final": is_final,
               "path": path, "bytes": size, "sha256": sha256, "created_at": utcnow()}  # fmt: skip
        with self.engine.begin() as conn:
            sqlite_direct.rows(conn, _RECORD_CHECKPOINT, row)


def _retry_on_conflict(action: Callable[[], None], attempts: int = 5) -> None:
    """Run an idempotent write again when a concurrent writer inserted the same rows first."""
    for attempt in range(attempts):
        try:
            action()
            return
        except IntegrityError:
            if attempt == attempts - 1:
                raise
