"""The machine misbehaves: the disk fills during an export, the output folder turns
read-only, another process holds the database lock past the busy timeout. Each time:
one clear error, nothing partial, and a resume that completes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, World, run_cli_process

N = 40


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 96 KiB tmpfs: real ENOSPC and real read-only remounts (needs root, as CI has)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def remount(mount: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)


def args(world: World, out: Path, *extra: str) -> list[str]:
    # the database lives on the real disk: only the exported files meet the fault
    return world.run_args(
        "--output_dir", str(out), "--db", str(world.db), "--num_samples", str(N),
        "--checkpoint_interval", "5", "--batch_size", "5", *extra,
    )  # fmt: skip


def assert_files_whole(out: Path) -> list[int]:
    """No temp file left, every JSON file parses; returns the checkpoint counts."""
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))
    counts = []
    for path in out.rglob("*.json"):
        doc = json.loads(path.read_text())
        assert doc["checkpoint_info"]["processed_count"] == len(doc["results"])
        if "latest" not in path.name and path.name.startswith("checkpoint_"):
            counts.append(doc["checkpoint_info"]["processed_count"])
    return sorted(counts)


def committed(world: World) -> int:
    return world.rows("SELECT COUNT(DISTINCT image_id) FROM sample_result")[0][0]


def test_a_full_disk_during_an_export_stops_cleanly_and_a_resume_completes(
    world: World, small_disk: Path
) -> None:
    first = run_cli_process(*args(world, small_disk, "--run_id", "full"))
    assert first.returncode == 1, first.stdout + first.stderr
    message = first.stderr.strip().splitlines()[-1]
    assert message.startswith(f"Error: cannot write {small_disk}/full/baseline/")
    assert "No space left on device" in message
    assert "every sample is still in the database" in message
    assert "Traceback" not in first.stderr
    done = committed(world)
    assert 0 < done < N
    assert_files_whole(small_disk)
    remount(small_disk, "size=8m")
    again = run_cli_process(*args(world, small_disk, "--run_id", "full",
                                  "--resume_from_checkpoint"))  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert world.rows("SELECT COUNT(*), COUNT(DISTINCT image_id) FROM sample_result") == [(N, N)]
    counts = assert_files_whole(small_disk)
    assert counts[-1] == N and counts == sorted(set(counts))
    final = json.loads((small_disk / "full" / "baseline" / "results_baseline.json").read_text())
    assert len(final["results"]) == N


def test_an_output_folder_that_turns_read_only_stops_cleanly_and_a_resume_completes(
    world: World, small_disk: Path
) -> None:
    remount(small_disk, "size=8m")
    proc = subprocess.Popen([sys.executable, "-m", "cobra_eval",
                             *args(world, small_disk, "--run_id", "ro")], cwd=REPO,
                            env=_env(COBRA_TEST_DELAY="0.2"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(small_disk.rglob("checkpoint_*_5_*.json")):
        time.sleep(0.05)
    remount(small_disk, "ro")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    message = err.strip().splitlines()[-1]
    assert message.startswith(f"Error: cannot write {small_disk}/ro/baseline/")
    assert "Read-only file system" in message and "Traceback" not in err
    assert 5 <= committed(world) < N
    remount(small_disk, "rw")
    again = run_cli_process(*args(world, small_disk, "--run_id", "ro", "--resume_from_checkpoint"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert world.rows("SELECT COUNT(*), COUNT(DISTINCT image_id) FROM sample_result") == [(N, N)]
    assert assert_files_whole(small_disk)[-1] == N


def test_a_database_locked_past_the_busy_timeout_stops_cleanly_and_a_resume_completes(
    world: World, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = run_cli_process(*args(world, out, "--run_id", "lk", "--num_samples", "10"))
    assert first.returncode == 0, first.stderr
    before = world.dump()
    # another process takes the write lock and keeps it for 6 s
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"con = sqlite3.connect({str(world.db)!r}, isolation_level=None)\n"
        "con.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(6)\n"
        "con.execute('ROLLBACK')\n")], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    blocked = run_cli_process(*args(world, out, "--run_id", "lk", "--resume_from_checkpoint"),
                              COBRA_EVAL_BUSY_TIMEOUT="1")  # fmt: skip
    assert blocked.returncode == 1, blocked.stdout + blocked.stderr
    message = blocked.stderr.strip().splitlines()[-1]
    assert "was locked by another process for more than 1 s (the busy timeout)" in message
    assert "run the same command again with --resume_from_checkpoint" in message
    assert "Traceback" not in blocked.stderr
    holder.wait(timeout=30)
    assert world.dump() == before  # the blocked run changed nothing
    again = run_cli_process(*args(world, out, "--run_id", "lk", "--resume_from_checkpoint"))
    assert again.returncode == 0, again.stderr
    assert world.rows("SELECT COUNT(*), COUNT(DISTINCT image_id) FROM sample_result") == [(N, N)]


def _env(**extra: str) -> dict[str, str]:
    from tests.conftest import subprocess_env

    return subprocess_env(**extra)
