"""An installed wheel carries its migrations and can create and upgrade a user's database."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

from cobra_eval.store.engine import head_revision
from tests.conftest import REPO


def test_the_wheel_ships_migrations_and_upgrades_a_database(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(REPO)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("cobra_eval-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cobra_eval/_migrations/env.py" in names
    assert any(n.startswith("cobra_eval/_migrations/versions/0001_") for n in names)

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import cobra_eval.store.engine as e; print(e.migrations_dir())"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()) == target / "cobra_eval" / "_migrations"
    db = tmp_path / "user.db"
    done = subprocess.run(
        [sys.executable, "-m", "cobra_eval", "db", "upgrade", "--db", str(db)],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    con = sqlite3.connect(db)
    assert con.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision(),)
