"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl in a temp dir, loopback only.

pytest-postgresql does the same but runs the server as the current user, and
PostgreSQL refuses to run as root, which CI containers are; so the cluster here
belongs to an unprivileged user when the tests run as root. Every test gets its
own database in the one server of the session.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Set (to 1) where the PostgreSQL tests must run, not be skipped: CI sets it.
REQUIRE_ENV = "COBRA_EVAL_REQUIRE_PG"


def find_binary(name: str) -> str | None:
    """A PostgreSQL server binary on PATH or in Debian's versioned folder (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]), reverse=True)  # fmt: skip
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PgServer:
    """A running cluster: ``database()`` makes a fresh database and returns its URL."""

    def __init__(self, root: Path, port: int, as_user: list[str]):
        self.root, self.port, self._as_user = root, port, as_user

    @property
    def admin_conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def database(self) -> str:
        """A new empty database on this server, as a SQLAlchemy URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        pg_ctl = find_binary("pg_ctl")
        assert pg_ctl is not None
        subprocess.run([*self._as_user, pg_ctl, "-D", str(self.root / "data"), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def pg_server() -> Iterator[PgServer]:
    """Start a cluster (trust auth, 127.0.0.1 only, fsync off: it is thrown away)."""
    initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    root = Path(tempfile.mkdtemp(prefix="cobra_pg_"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        # PostgreSQL will not run as root
        shutil.chown(root, "nobody")
        as_user = ["runuser", "-u", "nobody", "--"]
    data, log = root / "data", root / "server.log"
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "-A", "trust",
                    "-E", "UTF8", "--locale=C", "--no-sync"],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    port = _free_port()
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    command = [*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60"]
    started = subprocess.run([*command, "start"], capture_output=True, timeout=120)
    if started.returncode != 0:
        detail = log.read_text() if log.exists() else started.stderr.decode()
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {detail[-2000:]}")
    server = PgServer(root, port, as_user)
    try:
        yield server
    finally:
        server.stop()
