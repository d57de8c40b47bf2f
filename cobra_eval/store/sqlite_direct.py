"""The statements a run issues for every batch, run on SQLite's own cursor.

SQLAlchemy's execution path (events, parameter construction, result setup) took
several times longer than SQLite's own work for a batch of 16 results, and that
time came out of the model's: on a small machine the tool's threads share the
cores and the interpreter with generation. Here a statement's SQL is written once
and its parameters go through the same bind processors SQLAlchemy would apply, so
the stored bytes are the same either way. PostgreSQL keeps SQLAlchemy's path.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect, Executable, Insert, Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler

#: SQLite's historical limit on parameters per statement (newer builds allow more)
MAX_PARAMETERS = 999
#: Compiled statements kept per engine (the hot ones are a few dozen, built once)
MAX_PREPARED = 256


def is_sqlite(conn: Connection) -> bool:
    """Whether this connection's statements may go straight to SQLite."""
    return conn.dialect.name == "sqlite"


def fetch(conn: Connection, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement inside the connection's transaction; its rows, unconverted."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        return cursor.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        # the same exception SQLAlchemy raises (IntegrityError, OperationalError, ...)
        raise DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc
    finally:
        cursor.close()


def rows(
    conn: Connection, statement: Executable, params: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """A statement run with one set of parameters: its rows (none when it returns none).

    On SQLite the statement is compiled once per engine, then run on the driver's
    cursor, with the same bind and result processing as SQLAlchemy's; elsewhere
    SQLAlchemy runs it.
    """
    if not is_sqlite(conn):
        result = conn.execute(statement, params)
        return [tuple(row) for row in result] if result.returns_rows else []
    prepared = _prepared(conn.dialect, statement, params)
    sql, values = prepared.bound(params)
    return prepared.converted(fetch(conn, sql, values))


def scalar(conn: Connection, statement: Executable, params: Mapping[str, Any] | None = None) -> Any:
    """The first column of the first row (None without rows)."""
    found = rows(conn, statement, params)
    return found[0][0] if found else None


def stream(
    conn: Connection, statement: Executable, params: Mapping[str, Any], *, size: int
) -> Generator[tuple[Any, ...], None, None]:
    """rows, read size rows at a time (a whole run's results need not fit in memory)."""
    if not is_sqlite(conn):
        result = conn.execute(statement, params, execution_options={"yield_per": size})
        try:
            yield from (tuple(row) for row in result)
        finally:
            result.close()
        return
    prepared = _prepared(conn.dialect, statement, params)
    sql, values = prepared.bound(params)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        try:
            cursor.execute(sql, values)
            while block := cursor.fetchmany(size):
                yield from prepared.converted(block)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, values, exc, sqlite3.Error) from exc
    finally:
        cursor.close()


def execute_many(
    conn: Connection, statement: Executable, params: Sequence[Mapping[str, Any]]
) -> None:
    """A statement that returns no rows, run once per set of parameters (same keys in each)."""
    if not params:
        return
    if not is_sqlite(conn):
        conn.execute(statement, list(params))
        return
    prepared = _prepared(conn.dialect, statement, params[0])
    compiled = prepared.compiled
    names = compiled.positiontup or []
    convert = [prepared.binds.get(name) for name in names]
    # a bind with a value of its own (a literal in the statement) needs no parameter
    fixed = {name: bind.value for name, bind in compiled.binds.items() if not bind.required}
    values = [
        [
            value if c is None else c(value)
            for name, c in zip(names, convert, strict=True)
            for value in (one[name] if name in one or name not in fixed else fixed[name],)
        ]
        for one in params
    ]
    sql = compiled.string
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(sql, values)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, values, exc, sqlite3.Error) from exc
    finally:
        cursor.close()


@dataclass(frozen=True)
class _Prepared:
    statement: Executable
    compiled: SQLCompiler
    #: per bound parameter that has one, its bind processor
    binds: Mapping[str, Callable[[Any], Any]]
    #: per column of the rows, its result processor (empty when none has one)
    results: tuple[Callable[[Any], Any] | None, ...]

    def bound(self, params: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
        """The SQL (expanding IN lists for these parameters) and its processed values."""
        state = self.compiled.construct_expanded_state(params)
        # the state's processors are those of the expanded IN lists' values only
        binds: Mapping[str, Callable[[Any], Any]] = self.binds
        if state.processors:
            binds = {**self.binds, **state.processors}
        values = [
            value if (convert := binds.get(name)) is None else convert(value)
            for name, value in zip(
                state.positiontup or (), state.positional_parameters, strict=True
            )
        ]
        return state.statement, values

    def converted(self, found: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        if not self.results:
            return found
        return [
            tuple(value if convert is None else convert(value)
                  for convert, value in zip(self.results, row, strict=True))
            for row in found
        ]  # fmt: skip


_PREPARED: weakref.WeakKeyDictionary[Dialect, dict[Any, _Prepared]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _prepared(
    dialect: Dialect, statement: Executable, params: Mapping[str, Any] | None
) -> _Prepared:
    # an INSERT's columns are the parameters given, as with SQLAlchemy's execute
    columns = tuple(params or ()) if isinstance(statement, Insert) else None
    key = (id(statement), columns)
    known = _PREPARED.get(dialect)
    found = known.get(key) if known is not None else None
    if found is not None and found.statement is statement:
        return found
    compiled = statement.compile(dialect=dialect, column_keys=columns)  # type: ignore[attr-defined]
    assert isinstance(compiled, SQLCompiler)
    exported = getattr(statement, "exported_columns", ())
    results = tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, None) for column in exported
    )
    binds = {
        name: convert
        for name, bind in compiled.binds.items()
        if (convert := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
    }
    found = _Prepared(statement, compiled, binds, results if any(results) else ())
    with _LOCK:
        known = _PREPARED.setdefault(dialect, {})
        if len(known) >= MAX_PREPARED:
            known.clear()  # statements built per call: compiled each time, not kept forever
        known[key] = found
    return found


def placeholders(count: int) -> str:
    """``?, ?, …`` for count parameters."""
    return ", ".join("?" * count)


class InsertReturning:
    """Many-row INSERT … RETURNING into one table, chunked under MAX_PARAMETERS.

    Rows are tuples in ``columns`` order; each value goes through its column
    type's bind processor (JSON text, timestamps) as in SQLAlchemy. The returned
    rows come in no particular order, as with RETURNING in SQLite.
    """

    def __init__(self, table: Table, columns: Sequence[str], returning: Sequence[str]):
        self.table, self.columns, self.returning = table, tuple(columns), tuple(returning)
        self.rows_per_statement = max(MAX_PARAMETERS // len(self.columns), 1)
        self._sql: dict[int, str] = {}
        # per dialect: a JSON processor holds its engine's serializer
        self._processors: weakref.WeakKeyDictionary[Any, list[Callable[[Any], Any] | None]]
        self._processors = weakref.WeakKeyDictionary()

    def __call__(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        processors = self._bind_processors(conn)
        converted = [
            [
                value if convert is None else convert(value)
                for convert, value in zip(processors, row, strict=True)
            ]
            for row in rows
        ]
        out: list[tuple[Any, ...]] = []
        step = self.rows_per_statement
        for start in range(0, len(converted), step):
            chunk = converted[start : start + step]
            out += fetch(conn, self._statement(conn, len(chunk)), [v for row in chunk for v in row])
        return out

    def _bind_processors(self, conn: Connection) -> list[Callable[[Any], Any] | None]:
        dialect = conn.dialect
        found = self._processors.get(dialect)
        if found is None:
            found = [
                self.table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
                for name in self.columns
            ]
            self._processors[dialect] = found
        return found

    def _statement(self, conn: Connection, rows: int) -> str:
        sql = self._sql.get(rows)
        if sql is None:
            quote = conn.dialect.identifier_preparer.quote
            row = f"({placeholders(len(self.columns))})"
            sql = (
                f"INSERT INTO {quote(self.table.name)} "
                f"({', '.join(quote(name) for name in self.columns)}) "
                f"VALUES {', '.join([row] * rows)} "
                f"RETURNING {', '.join(quote(name) for name in self.returning)}"
            )
            self._sql[rows] = sql
        return sql
