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
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Dialect, Executable, Insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler

#: SQLite's historical limit on parameters per statement (newer builds allow more)
MAX_PARAMETERS = 999
#: Compiled statements kept per engine (the hot ones are a few dozen, built once)
MAX_PREPARED = 256
#: Shapes (IN list lengths) kept per statement: a run's batches take a few
MAX_SHAPES = 64


def _is_sqlite(conn: Connection) -> bool:
    return conn.dialect.name == "sqlite"


@contextmanager
def _cursor(conn: Connection, sql: str, params: Sequence[Any]) -> Iterator[sqlite3.Cursor]:
    """The driver's cursor with sql executed, closed after; errors as SQLAlchemy raises them."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        yield cursor.execute(sql, params)
    except sqlite3.Error as exc:
        # the same exception SQLAlchemy raises (IntegrityError, OperationalError, ...)
        raise DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc
    finally:
        cursor.close()


def fetch(conn: Connection, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement inside the connection's transaction; its rows, unconverted."""
    with _cursor(conn, sql, params) as cursor:
        return cursor.fetchall()


def rows(
    conn: Connection, statement: Executable, params: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """A statement run with one set of parameters: its rows (none when it returns none).

    On SQLite the statement is compiled once per engine, then run on the driver's
    cursor, with the same bind and result processing as SQLAlchemy's; elsewhere
    SQLAlchemy runs it.
    """
    if not _is_sqlite(conn):
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
) -> Generator[list[tuple[Any, ...]], None, None]:
    """rows, read and handed over size rows at a time (a whole run's need not fit in memory)."""
    if not _is_sqlite(conn):
        result = conn.execute(statement, params, execution_options={"yield_per": size})
        try:
            for part in result.partitions(size):
                yield [tuple(row) for row in part]
        finally:
            result.close()
        return
    prepared = _prepared(conn.dialect, statement, params)
    sql, values = prepared.bound(params)
    with _cursor(conn, sql, values) as cursor:
        while block := cursor.fetchmany(size):
            yield prepared.converted(block)


class _Slot:
    """Stands for a parameter (or one element of an IN list) while a statement's shape is made."""

    __slots__ = ("index", "name")

    def __init__(self, name: str, index: int | None):
        self.name, self.index = name, index


@dataclass(frozen=True)
class _Shape:
    """The SQL of a statement for given parameter names and IN list lengths, and its values."""

    sql: str
    #: per ``?``: the parameter name (None for a value the statement holds), the index in
    #: its IN list (None for a single value), the bind processor, the value held
    slots: tuple[tuple[str | None, int | None, Callable[[Any], Any] | None, Any], ...]


@dataclass(frozen=True)
class _Prepared:
    statement: Executable
    compiled: SQLCompiler
    #: per bound parameter that has one, its bind processor
    binds: Mapping[str, Callable[[Any], Any]]
    #: per column of the rows, its result processor (empty when none has one)
    results: tuple[Callable[[Any], Any] | None, ...]
    #: its expanding parameters (IN lists): their lengths, not values, shape the SQL
    expanding: tuple[str, ...]
    #: shapes by (parameter names given, expanding lengths); None where values shape the
    #: SQL too (literal-execute parameters, tuple IN lists)
    shapes: dict[Any, _Shape] | None = field(default=None, compare=False)

    def bound(self, params: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
        """The SQL (expanding IN lists for these parameters) and its processed values."""
        given = params or {}
        if self.shapes is None:
            sql, values = self._expanded(given)
            return sql, [value if convert is None else convert(value) for value, convert in values]
        # expanding the IN lists costs more than the statement's own run: done once a shape
        # (an IN list the statement holds, not given, is the same every time)
        key = (tuple(given), tuple(len(given.get(name, ())) for name in self.expanding))
        shape = self.shapes.get(key)
        if shape is None:
            if len(self.shapes) >= MAX_SHAPES:
                self.shapes.clear()  # lists of ever new lengths: each shape is O(length)
            shape = self.shapes[key] = self._shape(given)
        out = []
        for name, index, convert, held in shape.slots:
            value = held if name is None else given[name] if index is None else given[name][index]
            out.append(value if convert is None else convert(value))
        return shape.sql, out

    def _shape(self, given: Mapping[str, Any]) -> _Shape:
        """The shape of these parameters: where each of the SQL's values comes from."""
        probe = {
            name: [_Slot(name, k) for k in range(len(value))]
            if name in self.expanding
            else _Slot(name, None)
            for name, value in given.items()
        }
        sql, values = self._expanded(probe)
        slots = tuple(
            (value.name, value.index, convert, None)
            if isinstance(value, _Slot)
            else (None, None, convert, value)
            for value, convert in values
        )
        return _Shape(sql, slots)

    def _expanded(
        self, params: Mapping[str, Any]
    ) -> tuple[str, list[tuple[Any, Callable[[Any], Any] | None]]]:
        """The SQL with its IN lists expanded, and each of its values with its bind processor."""
        state = self.compiled.construct_expanded_state(params)
        # the state's processors are those of the expanded IN lists' values only
        binds: Mapping[str, Callable[[Any], Any]] = self.binds
        if state.processors:
            binds = {**self.binds, **state.processors}
        names = state.positiontup or ()
        values = zip(state.positional_parameters, map(binds.get, names), strict=True)
        return state.statement, list(values)

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
    expanding = tuple(name for name, bind in compiled.binds.items() if bind.expanding)
    # a literal-execute parameter's value, or a tuple IN list's arity, is written into the SQL
    shaped = not compiled.literal_execute_params and not any(
        compiled.binds[name].type._is_tuple_type for name in expanding
    )
    found = _Prepared(
        statement, compiled, binds, results if any(results) else (), expanding,
        {} if shaped else None,
    )  # fmt: skip
    with _LOCK:
        known = _PREPARED.setdefault(dialect, {})
        if len(known) >= MAX_PREPARED:
            known.clear()  # statements built per call: compiled each time, not kept forever
        known[key] = found
    return found


def _converted(convert: Callable[[Any], Any], values: Sequence[Any]) -> list[Any]:
    """A column's values through its bind processor, a value repeated row after row once.

    A batch's rows share their time stamps, run and worker: a claim of 64 samples
    converted its two datetimes 128 times.
    """
    out: list[Any] = []
    last: Any = out  # no value is this list
    done: Any = None
    for value in values:
        if value is not last:
            last, done = value, convert(value)
        out.append(done)
    return out


class InsertMany:
    """Many rows a statement: INSERT … VALUES (…), (…) [ON CONFLICT …] [RETURNING …].

    The statement is a SQLAlchemy insert (an upsert, with RETURNING or not), or a
    function of the connection giving one per dialect; rows are tuples in
    ``columns`` order. On SQLite, its compiled SQL's VALUES group is repeated for
    as many rows as fit under MAX_PARAMETERS, values processed as SQLAlchemy
    would; elsewhere SQLAlchemy runs it with one set of parameters per row.
    Returned rows come in no particular order.
    """

    def __init__(self, statement: Insert | Callable[[Connection], Insert], columns: Sequence[str]):
        self.statement, self.columns = statement, tuple(columns)
        self.rows_per_statement = max(MAX_PARAMETERS // len(self.columns), 1)
        self._sql: dict[tuple[int, int], str] = {}

    def __call__(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        if not rows:
            return []
        statement = self.statement if isinstance(self.statement, Insert) else self.statement(conn)
        if not _is_sqlite(conn):
            params = [dict(zip(self.columns, row, strict=True)) for row in rows]
            result = conn.execute(statement, params)
            return [tuple(row) for row in result] if result.returns_rows else []
        prepared = _prepared(conn.dialect, statement, dict.fromkeys(self.columns))
        by_column = [
            column if c is None else _converted(c, column)
            for c, column in zip(
                map(prepared.binds.get, self.columns), zip(*rows, strict=True), strict=True
            )
        ]
        values = [value for row in zip(*by_column, strict=True) for value in row]
        out: list[tuple[Any, ...]] = []
        step, width = self.rows_per_statement, len(self.columns)
        for start in range(0, len(rows), step):
            count = min(step, len(rows) - start)
            sql = self._many(prepared, count)
            out += fetch(conn, sql, values[start * width : (start + count) * width])
        return prepared.converted(out)

    def _many(self, prepared: _Prepared, rows: int) -> str:
        key = (id(prepared.statement), rows)
        sql = self._sql.get(key)
        if sql is None:
            one = prepared.compiled.string
            if list(prepared.compiled.positiontup or ()) != list(self.columns):
                raise ValueError(f"{one!r} binds more than the columns {self.columns}")
            group = f"({', '.join('?' * len(self.columns))})"
            head, found, tail = one.partition(f"VALUES {group}")
            if not found:
                raise ValueError(f"no VALUES {group} in {one!r}")
            sql = f"{head}VALUES {', '.join([group] * rows)}{tail}"
            if len(self._sql) >= MAX_PREPARED:
                self._sql.clear()
            self._sql[key] = sql
        return sql
