"""`--workers N`: processes on this machine share one run (CPU workers stand in for GPUs)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, World, as_foreground, load_json, run_cli_process, subprocess_env
from tests.stand_in import DELAY_ENV

pytestmark = pytest.mark.databases

PROGRESS = re.compile(r"^\[\d\d:\d\d:\d\d\] Processed (\d+)/24 samples\.\.\.$", re.M)
WORKER = re.compile(r"^Worker (\d): pid (\d+), device (\S+), log (\S+)$", re.M)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_three_workers_share_a_run_with_one_progress_display(world: World) -> None:
    result = run_cli_process(
        *world.run_args("--num_samples", "24", "--batch_size", "2", "--checkpoint_interval", "8",
                        "--workers", "3", "--devices", "cpu,cpu,cpu", "--metrics", "bleu"),
        **{DELAY_ENV: "0.4"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    workers = WORKER.findall(out)
    assert [(n, device) for n, _, device, _ in workers] == [
        ("1", "cpu"),
        ("2", "cpu"),
        ("3", "cpu"),
    ]
    counts = [int(c) for c in PROGRESS.findall(out)]
    assert counts == sorted(counts) and counts[-1] == 24  # the run's progress, not a worker's
    assert "Done: baseline 24/24 samples" in out
    rows = world.rows("SELECT image_id, worker FROM sample_result")
    assert len(rows) == 24 and len({i for i, _ in rows}) == 24
    pids = {w.rsplit(":", 1)[1] for _, w in rows}
    assert pids <= {pid for _, pid, _, _ in workers} and len(pids) >= 2
    run_id = world.only_run_id()
    final = load_json(world.method_dir(run_id, "baseline") / "results_baseline.json")
    assert final["corpus_metrics"]["n_samples"] == 24  # scored over everyone's samples
    for _, pid, _, log in workers:
        text = Path(log).read_text()
        assert "Done: baseline 24/24 samples" in text
        # a worker that started after the others had claimed everything commits nothing
        # (how long a process takes to start varies): the others' logs show their progress
        assert ("Processed" in text) == (pid in pids), text
    assert all(not alive(int(pid)) for _, pid, _, _ in workers)


def children(pid: int) -> list[int]:
    """The processes whose parent is pid (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # ended meanwhile
            # the command name may hold spaces: the fields after its ')' are fixed
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm to all"])
def test_ctrl_c_stops_every_worker_and_a_resume_finishes(world: World, stop: str) -> None:
    args = world.run_args("--num_samples", "24", "--batch_size", "2", "--workers", "3",
                          "--run_id", "p")  # fmt: skip
    parent = subprocess.Popen([sys.executable, "-m", "cobra_eval", *args], cwd=REPO,
                              env=subprocess_env(**{DELAY_ENV: "0.5"}), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              preexec_fn=as_foreground)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = world.rows("SELECT COUNT(*) FROM sample_result")[0][0] if world.has_table(
            "sample_result") else 0  # fmt: skip
        if done >= 4:
            break
        time.sleep(0.1)
    if stop == "ctrl-c":
        parent.send_signal(signal.SIGINT)  # as a terminal's Ctrl-C reaches the foreground process
    else:
        # as a batch scheduler stops a job: SIGTERM to every process of it at once
        for pid in [parent.pid, *children(parent.pid)]:
            os.kill(pid, signal.SIGTERM)
    out, err = parent.communicate(timeout=90)
    assert parent.returncode == 130, err + out
    assert "continue with --workers 3 --run_id p --resume_from_checkpoint" in err
    assert "Traceback" not in err + out
    pids = [int(pid) for _, pid, _, _ in WORKER.findall(out)]
    assert len(pids) == 3 and not any(alive(pid) for pid in pids)  # nothing left running
    saved = world.rows("SELECT COUNT(*) FROM sample_result")[0][0]
    assert 4 <= saved < 24
    assert world.rows("SELECT status FROM run_method") == [("interrupted",)]
    again = run_cli_process(*args, "--resume_from_checkpoint")
    assert again.returncode == 0, again.stderr + again.stdout
    assert world.rows("SELECT COUNT(*), COUNT(DISTINCT image_id) FROM sample_result") == [(24, 24)]


def test_devices_must_match_the_worker_count(world: World, cli) -> None:
    result = cli(*world.run_args("--workers", "2", "--devices", "0,1,2"))
    assert result.exit_code == 1
    assert "--devices lists 3 devices for --workers 2" in result.output
    bad = cli(*world.run_args("--workers", "2", "--devices", "0,gpu"))
    assert bad.exit_code == 1 and "'gpu' is not cpu, mps, a GPU number or cuda:N" in bad.output
