"""Fixtures: a small real dataset, a real SQLite file, the CLI in-process and as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cobra_eval.cli import main
from tests.stand_in import make_coco_world

REPO = Path(__file__).resolve().parent.parent
BACKEND = "tests.stand_in:EchoBackend"


@dataclass
class World:
    """A dataset on disk plus the output folder a run writes into."""

    root: Path
    dataset: Path
    out: Path

    @property
    def db(self) -> Path:
        return self.out / "cobra_eval.db"

    def run_args(self, *extra: str) -> list[str]:
        """The bare run command's arguments for this world (metrics off: they need a JVM)."""
        return [
            "--backend", BACKEND,
            "--dataset", str(self.dataset),
            "--output_dir", str(self.out),
            "--metrics", "none",
            *extra,
        ]  # fmt: skip

    def method_dir(self, run_id: str, method: str) -> Path:
        return self.out / run_id / method

    def checkpoints(self, method: str = "baseline") -> list[Path]:
        return sorted(self.out.glob(f"*/{method}/checkpoint_{method}_*.json"))

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the database with the plain sqlite3 module, as a user would."""
        import sqlite3

        con = sqlite3.connect(self.db)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def only_run_id(self) -> str:
        ids = [r[0] for r in self.rows("SELECT id FROM run")]
        assert len(ids) == 1, ids
        return ids[0]


@pytest.fixture
def world(tmp_path: Path) -> World:
    """40 images with 5 references each, and an empty output folder."""
    dataset = make_coco_world(tmp_path / "data", 40)
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
