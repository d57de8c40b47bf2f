"""Opening a results database: URL resolution, engine setup, schema upgrade.

SQLite gets WAL (readers never block the writer), a busy timeout, foreign
keys, and ``BEGIN IMMEDIATE`` transactions: a deferred transaction that reads
and then writes can fail at once with 'database is locked' instead of waiting,
so every transaction takes the write lock up front and waits its turn.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError

from cobra_eval.errors import StoreError
from cobra_eval.store import sqlite_direct

DB_ENV = "COBRA_EVAL_DB"
DEFAULT_DB_NAME = "cobra_eval.db"
BUSY_TIMEOUT_S = 30.0
#: Overrides BUSY_TIMEOUT_S (seconds): how long a write waits for another process's lock.
BUSY_TIMEOUT_ENV = "COBRA_EVAL_BUSY_TIMEOUT"
#: --durability: SQLite's synchronous setting in WAL mode (PostgreSQL keeps its own).
DURABILITY = {"normal": "NORMAL", "full": "FULL"}
READ_ONLY_OPTION = "cobra_eval_read_only"


def resolve_url(db: str | None, output_dir: Path | str = "results") -> str:
    """A SQLAlchemy URL from ``--db`` (URL or SQLite path), else the default file."""
    if not db:
        return "sqlite:///" + str((Path(output_dir) / DEFAULT_DB_NAME).resolve())
    if "://" in db:
        try:
            parsed = make_url(db)
        except ArgumentError as exc:
            raise StoreError(f"--db {mask_url(db)!r} is not a valid database URL: {exc}") from None
        try:
            parsed.get_dialect()
        except NoSuchModuleError:
            raise StoreError(
                f"--db {mask_url(db)!r} is not a database this tool can open: no SQLAlchemy "
                f"dialect {parsed.drivername!r} is installed (use a SQLite file path or e.g. "
                "postgresql+psycopg://USER@HOST/DB)"
            ) from None
        return db
    return "sqlite:///" + str(Path(db).expanduser().resolve())


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for every message and log line."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if (
        parsed.get_backend_name() != "sqlite"
        or not parsed.database
        or parsed.database == ":memory:"
    ):
        return None
    return Path(parsed.database)


def migrations_dir() -> Path:
    """The Alembic environment: inside the package when installed, else the repo's."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "_migrations"
    return packaged if packaged.is_dir() else here.parent / "migrations"


def alembic_config(url: str) -> Any:
    """An Alembic Config for this URL that works without alembic.ini."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@functools.cache
def _script() -> Any:
    # read once a process: loading the migration files took ~10 ms, twice a database opened
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str:
    """The newest schema revision this version of the tool knows."""
    head = _script().get_current_head()
    assert head is not None, "migrations/ has no revisions"
    return str(head)


def busy_timeout_s() -> float:
    """Seconds a write waits for a lock another process holds (COBRA_EVAL_BUSY_TIMEOUT)."""
    try:
        return float(os.environ.get(BUSY_TIMEOUT_ENV) or BUSY_TIMEOUT_S)
    except ValueError:
        return BUSY_TIMEOUT_S


def json_text(value: Any) -> str:
    """A JSON column's text: orjson's where it writes what ``json.dumps`` would read back.

    Compact and UTF-8 (the stdlib's spaced, ASCII-escaped text holds the same values),
    and several times faster: every result row holds four JSON columns. What orjson
    refuses (keys that are not strings, integers beyond 64 bits, lone surrogates,
    other types) and any ``null`` (orjson writes NaN and infinities as null; the
    stdlib as NaN and Infinity) is written by the stdlib, as before.
    """
    if value is None:
        return "null"  # SQLAlchemy's JSON writes None as JSON null (a result's scoring)
    try:
        text = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value)
    return json.dumps(value) if b"null" in text else text.decode()


def make_engine(url: str, *, durability: str = "normal") -> Engine:
    """An engine with the per-dialect settings above; nothing is connected yet."""
    kwargs: dict[str, Any] = {"json_serializer": json_text}
    is_sqlite = make_url(url).get_backend_name() == "sqlite"
    if is_sqlite:
        kwargs["connect_args"] = {"timeout": busy_timeout_s(), "check_same_thread": False}
    try:
        engine = create_engine(url, **kwargs)
    except ImportError as exc:
        raise StoreError(
            f"the database driver for {make_url(url).drivername} is not installed ({exc.name}); "
            "install it, e.g. pip install 'psycopg[binary]' for postgresql+psycopg"
        ) from None
    if is_sqlite:
        _configure_sqlite(engine, DURABILITY[durability])
    return engine


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Driver-level autocommit, so the BEGIN below is the only transaction start.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s() * 1000)}")
        cur.execute("PRAGMA journal_mode = WAL")
        # NORMAL: a commit survives a process crash; FULL: also a power loss (fsync per commit)
        cur.execute(f"PRAGMA synchronous = {synchronous}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Readers (see read_only) must not queue behind writers: WAL lets them run alongside.
        read = conn.get_execution_options().get(READ_ONLY_OPTION)
        # on the driver's connection: SQLAlchemy's execution path made an empty transaction
        # cost 128 µs instead of 91 (a run begins about 500 per 1,000 samples)
        sqlite_direct.fetch(conn, "BEGIN" if read else "BEGIN IMMEDIATE")


def read_only(engine: Engine) -> Engine:
    """The same engine, but its transactions only read (SQLite: a deferred BEGIN)."""
    return engine.execution_options(**{READ_ONLY_OPTION: True})


def _stored_revision_sqlite(path: Path) -> str | None:
    """Read the schema revision without writing a byte (no WAL switch, no lock upgrade)."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from None
    try:
        tables = {
            row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if "alembic_version" not in tables:
            if tables:
                raise StoreError(
                    f"{path} is a SQLite database but not a cobra_eval results database "
                    f"(it has tables {', '.join(sorted(tables)[:5])} and no schema version)"
                )
            return None
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a SQLite database ({exc})") from None
    finally:
        con.close()


def _stored_revision(engine: Engine) -> str | None:
    with read_only(engine).connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _check_known(revision: str | None, where: str) -> None:
    if revision is None:
        return
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    try:
        known = _script().get_revision(revision)
    except (RevisionError, CommandError):
        known = None
    if known is None:
        raise StoreError(
            f"database {where} has schema revision {revision}, which is newer than this "
            f"cobra_eval ({_version()}, schema head {head_revision()}) knows; upgrade cobra_eval "
            "to use it (the database was left untouched)"
        )


def _version() -> str:
    from cobra_eval import __version__

    return __version__


def open_engine(url: str, *, upgrade: bool = True, durability: str = "normal") -> Engine:
    """Open (creating if needed) a results database and bring its schema to head.

    A database stamped with a revision this tool does not know is refused
    before anything is written to it.
    """
    path = sqlite_path(url)
    where = str(path) if path else mask_url(url)
    if path is not None:
        if path.exists():
            if path.is_dir():
                raise StoreError(f"--db {path} is a directory, not a database file")
            _check_known(_stored_revision_sqlite(path), where)
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the folder for database {path}: {exc}") from None
    engine = make_engine(url, durability=durability)
    try:
        if path is None:
            _check_known(_stored_revision(engine), where)
        if upgrade and (
            path is None or not path.exists() or _stored_revision(engine) != head_revision()
        ):
            upgrade_schema(engine, url)
    except OperationalError as exc:
        engine.dispose()
        if path is not None and not path.exists() and not os.access(path.parent, os.W_OK):
            raise StoreError(
                f"cannot create database {path}: its folder {path.parent} is not writable"
            ) from None
        raise StoreError(f"cannot open database {where}: {exc.orig}") from None
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreError(f"cannot open database {where}: {exc}") from None
    return engine


def upgrade_schema(engine: Engine, url: str, revision: str = "head") -> None:
    """Run Alembic ``upgrade`` on this engine, in one transaction."""
    from alembic import command

    cfg = alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(url: str) -> str | None:
    """The revision a database is stamped with (None when empty), read without writing."""
    path = sqlite_path(url)
    if path is not None:
        if not path.exists():
            return None
        return _stored_revision_sqlite(path)
    engine = make_engine(url)
    try:
        return _stored_revision(engine)
    finally:
        engine.dispose()


def database_error_message(exc: BaseException, url: str) -> str:
    """One clear line for a database that failed mid-run (locked, gone, full, read-only)."""
    text = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0]
    where = mask_url(url)
    kept = (
        "every sample committed before is kept; run the same command again with "
        "--resume_from_checkpoint to continue"
    )
    if "locked" in text or "busy" in text:
        return (
            f"the database {where} was locked by another process for more than "
            f"{busy_timeout_s():g} s (the busy timeout); {kept}"
        )
    return f"the database {where} failed: {text}; {kept}"


def worker_identity() -> str:
    """user@host:pid, recorded with every row a process writes."""
    return f"{user_at_host()}:{os.getpid()}"


def process_alive(pid: int) -> bool:
    """Whether a process of this host still runs (a zombie, killed but not reaped, does not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def user_at_host() -> str:
    """user@host of this process."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # getuser raises OSError/KeyError when no user name is known
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"
