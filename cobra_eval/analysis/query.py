"""``query "SQL"``: read the results database with SQL, never write it.

Two locks, either enough on its own. SQLite: the file is opened with
``mode=ro`` and an authorizer allows only reading (no ATTACH, no PRAGMA that
writes, no temp tables). PostgreSQL: one statement (a server-side prepared
statement cannot hold two) in a ``READ ONLY`` transaction that is rolled back.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from cobra_eval.errors import CobraEvalError
from cobra_eval.store.engine import busy_timeout_s, mask_url, sqlite_path

#: What the SQLite authorizer lets a query do: read tables and call functions.
_SQLITE_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                   getattr(sqlite3, "SQLITE_RECURSIVE", 33)}  # fmt: skip


class QueryError(CobraEvalError):
    """The query was refused or failed; the database is unchanged."""


@dataclass
class QueryResult:
    """Column names and rows of a query."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


def run_query(url: str, sql: str) -> QueryResult:
    """Run one read-only SQL statement on the database at url."""
    if not sql.strip():
        raise QueryError("no SQL given")
    path = sqlite_path(url)
    if path is not None:
        if not path.is_file():
            raise QueryError(f"no results database at {path}")
        return _sqlite(str(path), sql)
    return _postgres(url, sql)


def _sqlite(path: str, sql: str) -> QueryResult:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=busy_timeout_s())
    except sqlite3.Error as exc:
        raise QueryError(f"cannot open {path} read-only: {exc}") from None

    def authorize(action: int, *_: Any) -> int:
        return sqlite3.SQLITE_OK if action in _SQLITE_ALLOWED else sqlite3.SQLITE_DENY

    con.set_authorizer(authorize)
    try:
        cursor = con.execute(sql)
        rows = cursor.fetchall()
        columns = [d[0] for d in cursor.description or ()]
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "not authorized" in text or "readonly" in text:
            text = "only reading queries are allowed (SELECT, WITH ...); nothing was changed"
        raise QueryError(f"query refused: {text}") from None
    except sqlite3.Warning as exc:  # more than one statement
        raise QueryError(f"query refused: {exc}") from None
    finally:
        con.close()
    return QueryResult(columns, rows)


def _postgres(url: str, sql: str) -> QueryResult:
    from sqlalchemy.engine import make_url

    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - psycopg is a dependency
        raise QueryError(f"the PostgreSQL driver is not installed ({exc.name})") from None
    parsed = make_url(url)
    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(conninfo) as conn:
            conn.execute("SET TRANSACTION READ ONLY")
            try:
                # a prepared statement cannot hold a second command (e.g. "COMMIT; DELETE ...")
                cursor = conn.execute(sql.strip().rstrip(";"), prepare=True)
                rows = [tuple(r) for r in cursor.fetchall()] if cursor.description else []
                columns = [d.name for d in cursor.description or ()]
            finally:
                conn.rollback()
    except psycopg.errors.ReadOnlySqlTransaction:
        raise QueryError(
            "query refused: only reading queries are allowed (SELECT, WITH ...); nothing was "
            "changed"
        ) from None
    except psycopg.Error as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QueryError(f"query failed on {mask_url(url)}: {message}") from None
    return QueryResult(columns, rows)


def _cell(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


def format_result(result: QueryResult, fmt: str, *, max_width: int = 60) -> str:
    """The result as an aligned table, CSV or JSON (a list of objects)."""
    rows = [[_cell(v) for v in row] for row in result.rows]
    if fmt == "json":
        return json.dumps([dict(zip(result.columns, r, strict=True)) for r in rows], indent=2,
                          ensure_ascii=False, default=str) + "\n"  # fmt: skip
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows(rows)
        return out.getvalue()
    return _table(result.columns, rows, max_width) + f"({len(rows)} rows)\n"


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int) -> str:
    def show(value: Any) -> str:
        text = "NULL" if value is None else (f"{value:.4f}" if isinstance(value, float) else
                                              str(value))  # fmt: skip
        text = " ".join(text.split())
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[show(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]  # fmt: skip
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in cells]  # fmt: skip
    return "\n".join(lines) + "\n"
