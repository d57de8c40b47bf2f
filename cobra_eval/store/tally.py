"""Counting a method's results as they grow: the rows added since a known id, not all again.

A run re-reads its count once per batch (other workers commit too) and a
checkpoint export counts what it writes; counting the whole method each time
made a 100,000-sample run spend a quarter of its time counting. Result ids only
grow, so the rows after the last id seen are the new ones, read through the
primary key.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import BindParameter, Connection, and_, bindparam, case, func, literal, select

from cobra_eval.store import sqlite_direct
from cobra_eval.store.repository import (
    COUNT_IN_PLAN,
    COUNT_RESULTS,
    PLAN,
    RESULT,
    RUN_METHOD,
    Store,
)

#: On PostgreSQL a tally counts everything again after this many reads: a transaction that
#: commits late can hold an id below one already seen. SQLite's writers take turns, so its
#: ids appear in order.
FULL_EVERY = 16

_RUN_ID: BindParameter[str] = bindparam("run_id")
_METHOD: BindParameter[str] = bindparam("method")
_FAILED = RESULT.c.status != "ok"
_REVISION = (
    select(RUN_METHOD.c.revision)
    .where(RUN_METHOD.c.run_id == _RUN_ID, RUN_METHOD.c.method == _METHOD)
    .scalar_subquery()
)
_SINCE = (
    select(
        func.count().label("count"),
        func.count(case((_FAILED, 1))).label("failed"),
        func.count(case((PLAN.c.position < bindparam("total"), 1))).label("in_plan"),
        func.count(case((PLAN.c.position > bindparam("last_position"), 1))).label("after"),
        func.max(RESULT.c.id).label("last_id"),
        _REVISION.label("revision"),
    )
    .select_from(
        RESULT.outerjoin(
            PLAN, and_(PLAN.c.run_id == RESULT.c.run_id, PLAN.c.image_id == RESULT.c.image_id)
        )
    )
    # `|| ''` keeps the planner off the (run_id, method, image_id) index, which would
    # walk all the method's results: the primary key's range holds just the new rows
    .where(
        RESULT.c.run_id + literal("") == _RUN_ID,
        RESULT.c.method + literal("") == _METHOD,
        RESULT.c.id > bindparam("last_id"),
    )
)
# the count, the newest id of every method (the rows after it are new; the primary key's
# maximum is free) and the revision, in one statement: one snapshot on PostgreSQL too
_NEWEST = select(func.max(RESULT.c.id)).scalar_subquery()
_ALL = {
    False: select(COUNT_RESULTS.scalar_subquery(), _NEWEST, _REVISION),
    True: select(COUNT_IN_PLAN.scalar_subquery(), _NEWEST, _REVISION),
}


@dataclass(frozen=True)
class Since:
    """A method's results with ids after a given one."""

    count: int
    failed: int
    #: among the plan's first total positions, and planned after the given position
    in_plan: int
    after: int
    #: the newest of them (None: none), and the method's revision in the same read
    last_id: int | None
    revision: int | None


def results_since(
    conn: Connection,
    run_id: str,
    method: str,
    last_id: int,
    *,
    total: int,
    last_position: int = -1,
) -> Since:
    """Count the method's results with ids after last_id (reads only those rows)."""
    keys = {"run_id": run_id, "method": method, "last_id": last_id, "total": total,
            "last_position": last_position}  # fmt: skip
    return Since(*sqlite_direct.rows(conn, _SINCE, keys)[0])


class ResultTally:
    """A method's result count (ok or failed), optionally within the plan's first limit.

    Each read counts the rows added since the previous one. Everything is counted
    again on the first read, when the method's revision changed (rows replaced,
    merged or rescored: a replaced failure would otherwise count twice) and, on
    PostgreSQL, every FULL_EVERY reads.
    """

    def __init__(self, store: Store, run_id: str, method: str, *, limit: int | None = None):
        self.store, self.run_id, self.method, self.limit = store, run_id, method, limit
        self._full_every = 0 if store.engine.dialect.name == "sqlite" else FULL_EVERY
        self._count = 0
        self._last_id: int | None = None
        self._revision: int | None = None
        self._reads = 0

    def read(self) -> int:
        """The count now."""
        total = self.limit if self.limit is not None else 0  # in_plan then unused
        with self.store.reader.connect() as conn, conn.begin():
            since = None
            due = bool(self._full_every) and self._reads % self._full_every == 0
            if self._last_id is not None and not due:
                since = results_since(conn, self.run_id, self.method, self._last_id, total=total)
            if since is not None and since.revision == self._revision:
                self._count += since.in_plan if self.limit is not None else since.count
                self._last_id = since.last_id or self._last_id
            else:
                keys = {"run_id": self.run_id, "method": self.method, "total": total}
                found = sqlite_direct.rows(conn, _ALL[self.limit is not None], keys)
                count, last_id, revision = found[0]
                self._count, self._last_id, self._revision = count, last_id or 0, revision
        self._reads += 1
        return self._count
