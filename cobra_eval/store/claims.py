"""Work claims: many workers, on one machine or many, share a run's pending samples.

A worker claims a small batch in one statement (``INSERT ... ON CONFLICT DO
UPDATE ... WHERE the old claim expired ... RETURNING``, which both SQLite and
PostgreSQL run atomically), renews its claims while it generates, and keeps
them after committing: a finished sample is skipped by every claim query, and a
claim row that stays put is what stops a slow worker from taking a sample that
was just committed. A claim whose worker stopped renewing expires and is taken
over; one whose worker is a dead process on this host is taken over without
waiting for expiry (looked for at a worker's first claim, then every DEAD_CHECK_S
and whenever it waits for others).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BindParameter,
    Connection,
    and_,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)

from cobra_eval.store import sqlite_direct
from cobra_eval.store.engine import process_alive, user_at_host
from cobra_eval.store.models import ExportLease, SampleClaim, utcnow
from cobra_eval.store.repository import PLAN, RESULT, Store, Upsert

CLAIM = SampleClaim.__table__  # type: ignore[attr-defined]
LEASE = ExportLease.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class OthersWork:
    """Samples of a method that other live workers hold right now."""

    count: int
    until: datetime | None


#: Seconds between a worker's looks for claims of dead processes of its host, as it claims.
DEAD_CHECK_S = 10.0


@dataclass
class ClaimCursor:
    """Where a worker's next claim starts looking: after the last plan position it claimed
    (at first, where the worker expects pending samples to start: any position works, as
    a claim that finds nothing after it looks from the plan's start).

    It also paces the look for dead local workers' claims: every live claim of
    the method is read for it, and a fast run holds thousands.
    """

    position: int = -1
    dead_checked_at: float | None = None

    def look_for_dead(self) -> bool:
        """Whether this claim looks (the first one, then one every DEAD_CHECK_S)."""
        now = time.monotonic()
        if self.dead_checked_at is not None and now - self.dead_checked_at < DEAD_CHECK_S:
            return False
        self.dead_checked_at = now
        return True


def claim_batch(
    store: Store,
    run_id: str,
    method: str,
    worker: str,
    *,
    limit: int,
    total: int,
    lease_s: float,
    retry_failed_before: datetime,
    in_hand: Collection[int] = (),
    cursor: ClaimCursor | None = None,
) -> list[int]:
    """Claim up to limit pending samples among the first total of the plan, in plan order.

    Pending: no successful result, no live claim of another worker, and no failed
    result newer than retry_failed_before (a sample that failed in this
    invocation is not retried by it; the next invocation retries it). Samples
    in_hand (this worker's batches still being finished) are not claimed again.

    With a cursor, the search starts after the last position it claimed, and
    goes back to the start of the plan only when nothing is pending after it (a
    dead worker's expired claims, failures to retry): without it, each claim
    walks past every settled sample and a 100k-sample run costs O(N^2).
    """
    now = utcnow()
    with store.engine.begin() as conn:
        # (a worker with nothing to claim waits in others_work, which always looks)
        if cursor is None or cursor.look_for_dead():
            _expire_dead_local_claims(conn, run_id, method, now)
        start = cursor.position if cursor is not None else -1
        # in hand: left out here rather than in SQL, where a long list (a finisher can hold
        # a thousand samples) could pass an older SQLite's limit of 999 parameters
        hand = set(in_hand)
        keys = {"run_id": run_id, "method": method, "worker": worker, "now": now,
                "retry_before": retry_failed_before, "total": total,
                "limit": limit + len(hand), "start": start}  # fmt: skip

        def pending(keys: dict[str, Any]) -> list[tuple[int, int]]:
            rows = sqlite_direct.rows(conn, _PENDING, keys)
            return [(image_id, position) for image_id, position in rows if image_id not in hand]

        found = pending(keys)[:limit]
        if not found and start >= 0:
            found = pending({**keys, "start": -1})[:limit]
        if not found:
            return []
        if cursor is not None:
            cursor.position = max(position for _, position in found)
        candidates = [image_id for image_id, _ in found]
        expires = now + timedelta(seconds=lease_s)
        rows = [(run_id, method, i, worker, now, expires) for i in candidates]
        won = {image_id for (image_id,) in _CLAIM_WRITE(conn, rows)}
    return [i for i in candidates if i in won]


_RUN_ID: BindParameter[str] = bindparam("run_id")
_METHOD: BindParameter[str] = bindparam("method")
_NOW: BindParameter[datetime] = bindparam("now")
# built once with bound parameters (building it cost more than running it)
_PENDING = (
    select(PLAN.c.image_id, PLAN.c.position)
    .where(PLAN.c.run_id == _RUN_ID, PLAN.c.position < bindparam("total"))
    .where(PLAN.c.position > bindparam("start"))
    .where(
        # settled: a successful result, or one that failed in this invocation
        ~exists().where(
            RESULT.c.run_id == _RUN_ID,
            RESULT.c.method == _METHOD,
            RESULT.c.image_id == PLAN.c.image_id,
            or_(RESULT.c.status == "ok", RESULT.c.created_at >= bindparam("retry_before")),
        ),
        # taken by another worker's live claim
        ~exists().where(
            CLAIM.c.run_id == _RUN_ID,
            CLAIM.c.method == _METHOD,
            CLAIM.c.image_id == PLAN.c.image_id,
            CLAIM.c.worker != bindparam("worker"),
            CLAIM.c.expires_at > _NOW,
        ),
    )
    .order_by(PLAN.c.position)
    .limit(bindparam("limit"))
)
_LOCAL_HOLDERS = (
    select(CLAIM.c.worker)
    .distinct()
    .where(
        CLAIM.c.run_id == _RUN_ID,
        CLAIM.c.method == _METHOD,
        CLAIM.c.expires_at > _NOW,
        CLAIM.c.worker.startswith(bindparam("prefix")),
    )
)


def _claim_conflict(stmt: Any) -> Any:
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[CLAIM.c.run_id, CLAIM.c.method, CLAIM.c.image_id],
        set_={"worker": new.worker, "claimed_at": new.claimed_at, "expires_at": new.expires_at},
        # another worker's live claim stays: that sample is not ours
        where=or_(CLAIM.c.expires_at <= new.claimed_at, CLAIM.c.worker == new.worker),
    ).returning(CLAIM.c.image_id)


_CLAIM_TAKE = Upsert(CLAIM, _claim_conflict)
_CLAIM_WRITE = sqlite_direct.InsertMany(
    _CLAIM_TAKE, ("run_id", "method", "image_id", "worker", "claimed_at", "expires_at")
)


def renew(
    store: Store, run_id: str, method: str, worker: str, ids: Iterable[int], lease_s: float
) -> int:
    """Extend this worker's claims on ids; returns how many it still held."""
    ids = list(ids)
    if not ids:
        return 0
    with store.engine.begin() as conn:
        done = conn.execute(
            update(CLAIM)
            .where(CLAIM.c.run_id == run_id, CLAIM.c.method == method, CLAIM.c.worker == worker,
                   CLAIM.c.image_id.in_(ids))
            .values(expires_at=utcnow() + timedelta(seconds=lease_s))
        )  # fmt: skip
    return int(done.rowcount or 0)


def release(
    store: Store, run_id: str, method: str, worker: str, ids: Iterable[int] | None = None
) -> None:
    """Let others take these claims (all of this worker's, when ids is None) at once."""
    query = update(CLAIM).where(
        CLAIM.c.run_id == run_id, CLAIM.c.method == method, CLAIM.c.worker == worker,
        CLAIM.c.expires_at > utcnow(),
    )  # fmt: skip
    if ids is not None:
        ids = list(ids)
        if not ids:
            return
        query = query.where(CLAIM.c.image_id.in_(ids))
    with store.engine.begin() as conn:
        conn.execute(query.values(expires_at=utcnow()))


def others_work(store: Store, run_id: str, method: str, worker: str, total: int) -> OthersWork:
    """Unfinished samples of this selection that other workers hold by live claims."""
    now = utcnow()
    finished = exists().where(
        RESULT.c.run_id == run_id, RESULT.c.method == method,
        RESULT.c.image_id == CLAIM.c.image_id, RESULT.c.status == "ok",
    )  # fmt: skip
    in_selection = exists().where(
        PLAN.c.run_id == run_id, PLAN.c.image_id == CLAIM.c.image_id, PLAN.c.position < total
    )
    query = select(func.count(), func.max(CLAIM.c.expires_at)).where(
        CLAIM.c.run_id == run_id, CLAIM.c.method == method, CLAIM.c.worker != worker,
        CLAIM.c.expires_at > now, ~finished, in_selection,
    )  # fmt: skip
    with store.engine.begin() as conn:
        _expire_dead_local_claims(conn, run_id, method, now)
        count, until = conn.execute(query).one()
    return OthersWork(int(count or 0), until)


def live_holders(store: Store, run_id: str, method: str) -> dict[str, datetime]:
    """The workers holding live claims on a method now, each with its last claim's expiry.

    A running worker holds some until it ends (it claims ahead, and a finished
    method's claims are cleared); a dead process of this host holds none.
    """
    now = utcnow()
    query = (
        select(CLAIM.c.worker, func.max(CLAIM.c.expires_at))
        .where(CLAIM.c.run_id == run_id, CLAIM.c.method == method, CLAIM.c.expires_at > now)
        .group_by(CLAIM.c.worker)
        .order_by(CLAIM.c.worker)
    )
    with store.engine.begin() as conn:
        _expire_dead_local_claims(conn, run_id, method, now)
        return {worker: until for worker, until in conn.execute(query)}


def clear_claims(store: Store, run_id: str, method: str) -> None:
    """Forget a finished method's claims (they only matter while work is pending)."""
    with store.engine.begin() as conn:
        conn.execute(delete(CLAIM).where(CLAIM.c.run_id == run_id, CLAIM.c.method == method))


def _expire_dead_local_claims(conn: Connection, run_id: str, method: str, now: datetime) -> None:
    """A claim of a process of this host that no longer runs is over now, not at expiry."""
    keys = {"run_id": run_id, "method": method, "now": now, "prefix": f"{user_at_host()}:"}
    holders = conn.execute(_LOCAL_HOLDERS, keys).scalars()
    dead = [w for w in holders if _dead_local(w)]
    if dead:
        conn.execute(
            update(CLAIM)
            .where(CLAIM.c.run_id == run_id, CLAIM.c.method == method, CLAIM.c.worker.in_(dead),
                   CLAIM.c.expires_at > now)
            .values(expires_at=now)
        )  # fmt: skip


def _dead_local(worker: str) -> bool:
    """Whether worker (user@host:pid) is a process of this host that no longer runs."""
    prefix = f"{user_at_host()}:"
    pid = worker[len(prefix) :]
    # a pid that is not a number is not ours to judge: its claims expire on time
    return worker.startswith(prefix) and pid.isdigit() and not process_alive(int(pid))


_LEASE_KEY = and_(LEASE.c.run_id == bindparam("run_id"), LEASE.c.method == bindparam("method"))
_LEASE_HOLDER = select(LEASE.c.worker).where(_LEASE_KEY)
_LEASE_DROP = delete(LEASE).where(_LEASE_KEY)
_LEASE_RELEASE = delete(LEASE).where(_LEASE_KEY, LEASE.c.worker == bindparam("worker"))


def _lease_conflict(stmt: Any) -> Any:
    """Take the lease if it is free, expired or already ours; RETURNING says whether it was."""
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[LEASE.c.run_id, LEASE.c.method],
        set_={"worker": new.worker, "expires_at": new.expires_at},
        where=or_(LEASE.c.expires_at <= bindparam("now"), LEASE.c.worker == new.worker),
    ).returning(LEASE.c.worker)


_LEASE_TAKE = Upsert(LEASE, _lease_conflict)


def acquire_export_lease(
    store: Store, run_id: str, method: str, worker: str, lease_s: float
) -> bool:
    """Become the one worker writing this method's checkpoint files, for lease_s at most."""
    now = utcnow()
    key = {"run_id": run_id, "method": method}
    with store.engine.begin() as conn:
        holder = sqlite_direct.scalar(conn, _LEASE_HOLDER, key)
        if holder is not None and _dead_local(holder):
            # its writer was killed mid-export: the lease is over now, not at expiry
            conn.execute(_LEASE_DROP, key)
        row = {**key, "worker": worker, "expires_at": now + timedelta(seconds=lease_s), "now": now}
        return bool(sqlite_direct.rows(conn, _LEASE_TAKE(conn), row))


def release_export_lease(store: Store, run_id: str, method: str, worker: str) -> None:
    """Give the export lease back."""
    with store.engine.begin() as conn:
        keys = {"run_id": run_id, "method": method, "worker": worker}
        sqlite_direct.rows(conn, _LEASE_RELEASE, keys)


class Heartbeat:
    """Renews this worker's current claims in the background while a batch generates."""

    def __init__(self, store: Store, run_id: str, method: str, worker: str, lease_s: float):
        self.store, self.run_id, self.method, self.worker = store, run_id, method, worker
        self.lease_s = lease_s
        self._ids: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="claim-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def hold(self, ids: Sequence[int]) -> None:
        """The claims to keep alive from now on."""
        with self._lock:
            self._ids = list(ids)

    def _run(self) -> None:
        # renew at a third of the lease: two missed beats still leave the claim alive
        while not self._stop.wait(self.lease_s / 3):
            with self._lock:
                ids = list(self._ids)
            try:
                renew(self.store, self.run_id, self.method, self.worker, ids, self.lease_s)
            except Exception:  # a missed beat is retried; the lease has slack
                continue
