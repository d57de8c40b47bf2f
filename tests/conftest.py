"""Fixtures: a small real dataset, a real SQLite file, the CLI in-process and as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cobra_eval.cli import main
from tests.pg_server import REQUIRE_ENV, PgServer, pg_server
from tests.stand_in import make_coco_world

REPO = Path(__file__).resolve().parent.parent
BACKEND = "tests.stand_in:EchoBackend"


@dataclass
class World:
    """A dataset on disk plus the output folder a run writes into, and its database.

    The database is the default SQLite file in the output folder, or (for tests
    marked ``databases``, in their PostgreSQL variant) a fresh PostgreSQL database.
    """

    root: Path
    dataset: Path
    out: Path
    url: str | None = None
    #: makes another empty PostgreSQL database (None for SQLite)
    new_database: Callable[[], str] | None = None

    @property
    def kind(self) -> str:
        return "postgresql" if self.url else "sqlite"

    @property
    def db(self) -> Path:
        return self.out / "cobra_eval.db"

    @property
    def shown_as(self) -> str:
        """How messages begin to name this database."""
        return "postgresql+psycopg://postgres@127.0.0.1:" if self.url else "sqlite:///"

    @property
    def db_option(self) -> list[str]:
        """--db naming this world's database explicitly."""
        return ["--db", self.url or str(self.db)]

    @property
    def db_args(self) -> list[str]:
        """--db URL for PostgreSQL; nothing for SQLite (the default file in --output_dir)."""
        return ["--db", self.url] if self.url else []

    def run_args(self, *extra: str) -> list[str]:
        """The bare run command's arguments for this world (metrics off: they need a JVM)."""
        return [
            "--backend", BACKEND,
            "--dataset", str(self.dataset),
            "--output_dir", str(self.out),
            *self.db_args,
            "--metrics", "none",
            *extra,
        ]  # fmt: skip

    def db_exists(self) -> bool:
        """Whether anything was created: the SQLite file, or any table in PostgreSQL."""
        if not self.url:
            return self.db.exists()
        return bool(self._pg("SELECT 1 FROM pg_tables WHERE schemaname = 'public'"))

    def has_table(self, name: str) -> bool:
        if not self.url:
            return self.db.exists() and bool(
                self.rows("SELECT 1 FROM sqlite_master WHERE name = ?", name)
            )
        return bool(self._pg("SELECT 1 FROM pg_tables WHERE tablename = %s", name))

    def lose_database(self) -> None:
        """The database is gone (a new empty one takes its place)."""
        if self.new_database is not None:
            self.url = self.new_database()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db}{suffix}").unlink(missing_ok=True)

    def dump(self) -> list[Any]:
        """Everything in the database, comparable before and after (empty if none)."""
        if not self.url:
            if not self.db.exists():
                return []
            import sqlite3

            con = sqlite3.connect(self.db)
            try:
                return list(con.iterdump())
            finally:
                con.close()
        tables = [t for (t,) in self._pg(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]  # fmt: skip
        return [(t, self._pg(f'SELECT * FROM "{t}" ORDER BY 1')) for t in tables]

    def method_dir(self, run_id: str, method: str) -> Path:
        return self.out / run_id / method

    def checkpoints(self, method: str = "baseline") -> list[Path]:
        return sorted(self.out.glob(f"*/{method}/checkpoint_{method}_*.json"))

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the database with the plain driver, as a user would (JSON comes back as text)."""
        if self.url:
            return self._pg(sql.replace("?", "%s"), *params)
        import sqlite3

        con = sqlite3.connect(self.db)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def _pg(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        import psycopg

        assert self.url is not None
        conninfo = self.url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(conninfo) as conn:
            found = conn.execute(sql, params).fetchall()
        # as sqlite3 gives them: JSON as text, so tests read both the same way
        return [tuple(json.dumps(v) if isinstance(v, (dict, list)) else v for v in row)
                for row in found]  # fmt: skip

    def only_run_id(self) -> str:
        ids = [r[0] for r in self.rows("SELECT id FROM run")]
        assert len(ids) == 1, ids
        return ids[0]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # tests marked `databases` run once per database kind, except those about SQLite files
    marked = metafunc.definition.get_closest_marker
    if "world" not in metafunc.fixturenames:
        return
    if marked("postgresql_only"):
        metafunc.parametrize("db_kind", ["postgresql"])
    elif marked("databases") and not marked("sqlite_only"):
        metafunc.parametrize("db_kind", ["sqlite", "postgresql"])


@pytest.fixture
def db_kind() -> str:
    """The database a World uses: SQLite unless the test is parametrized over both."""
    return "sqlite"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """One throwaway PostgreSQL server for the session (skipped where none is installed)."""
    try:
        with pg_server() as server:
            yield server
    except FileNotFoundError as exc:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{exc}, and {REQUIRE_ENV} is set")
        pytest.skip(str(exc))


@pytest.fixture
def world(tmp_path: Path, db_kind: str, request: pytest.FixtureRequest) -> World:
    """40 images with 5 references each, an empty output folder, and the database."""
    dataset = make_coco_world(tmp_path / "data", 40)
    if db_kind == "postgresql":
        server = request.getfixturevalue("postgres")
        return World(tmp_path, dataset, tmp_path / "results", server.database(), server.database)
    return World(tmp_path, dataset, tmp_path / "results")


@pytest.fixture
def cli() -> Callable[..., Result]:
    """Invoke the CLI in-process; asserts nothing by itself."""
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    return invoke


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for running `python -m cobra_eval` with the stand-in backend importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("COBRA_EVAL_DB", None)
    env.update(extra)
    return env


def as_foreground() -> None:
    """preexec_fn for a process a test sends Ctrl-C (SIGINT): as a terminal's foreground job has it.

    A shell starts background jobs (``make test &``) with SIGINT ignored, and children
    inherit that: such a test would wait for a Ctrl-C that cannot arrive.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli_process(
    *args: str, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """`python -m cobra_eval ARGS` in a real process."""
    return subprocess.run(
        [sys.executable, "-m", "cobra_eval", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(**env),
        cwd=REPO,
    )


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())
