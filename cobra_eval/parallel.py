"""Several worker processes on this machine sharing one run: ``--workers N [--devices ...]``.

Each worker is an ordinary run of the same settings (``python -m cobra_eval.parallel``
with the settings as JSON), so the work is shared through the database's claims
exactly as workers on different machines share it. The first worker resolves
the run (new, named or resumed) and announces its id; the others join that run.
Workers run in their own sessions: Ctrl-C reaches only this process, which passes
one interrupt to each and waits for them to save and stop. Progress shown here
is read from the database, so it is the run's, not one worker's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cobra_eval.config import RunSettings
from cobra_eval.errors import CobraEvalError, ConfigError
from cobra_eval.process_exit import freeze_heap_at_exit
from cobra_eval.progress import clock

#: Seconds between looks at the database for progress.
POLL_S = 0.5
#: Seconds a worker gets to save and stop after the interrupt before it is killed.
STOP_GRACE_S = 60.0


@dataclass
class WorkerProcess:
    """One worker: its process, device and log file."""

    index: int
    device: str
    log: Path
    proc: subprocess.Popen[bytes]


@dataclass
class ParallelOutcome:
    """How a parallel run ended."""

    run_id: str | None
    exit_code: int
    workers: list[WorkerProcess] = field(default_factory=list)


def parse_devices(text: str | None, workers: int) -> list[str]:
    """'0,1' -> ['0', '1']; empty -> every worker uses --device. Checks the count."""
    if not text:
        return []
    devices = [part.strip() for part in text.split(",") if part.strip()]
    if len(devices) != workers:
        raise ConfigError(
            f"--devices lists {len(devices)} devices for --workers {workers}; give one per worker "
            "(e.g. --workers 2 --devices 0,1)"
        )
    for device in devices:
        if not (device in ("cpu", "mps", "cuda") or device.isdigit()
                or (device.startswith("cuda:") and device[5:].isdigit())):  # fmt: skip
            raise ConfigError(f"--devices: {device!r} is not cpu, mps, a GPU number or cuda:N")
    return devices


def _device_env(device: str) -> tuple[str | None, dict[str, str]]:
    """The --device and environment that pin a worker to one device."""
    if device.isdigit() or device.startswith("cuda:"):
        # each worker sees only its GPU, as cuda:0
        return "cuda", {"CUDA_VISIBLE_DEVICES": device.removeprefix("cuda:")}
    return device, {}


def run_parallel(
    settings: RunSettings,
    workers: int,
    devices: Sequence[str] = (),
    *,
    echo: Callable[[str], Any] = print,
) -> ParallelOutcome:
    """Run `workers` processes on one run; returns the run id and an exit code (0, 1 or 130)."""
    from cobra_eval.store import Store, resolve_url

    folder = settings.output_dir / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    announce = Path(tempfile.mkstemp(prefix="cobra_run_id_", dir=folder)[1])
    outcome = ParallelOutcome(run_id=None, exit_code=0)
    try:
        first = _start(settings, 0, devices, folder, stamp, announce)
        outcome.workers.append(first)
        run_id = _wait_for_run_id(first, announce)
        if run_id is None:
            outcome.exit_code = 1
            echo(f"Worker 1 stopped before the run started:\n{_tail(first.log)}")
            return outcome
        outcome.run_id = run_id
        # the others join the run the first one resolved, whatever way it was chosen
        joined = settings.model_copy(update={"run_id": run_id, "resume_from_checkpoint": False,
                                             "fresh": False, "load_results": None})  # fmt: skip
        for index in range(1, workers):
            outcome.workers.append(_start(joined, index, devices, folder, stamp, None))
        for w in outcome.workers:
            echo(f"Worker {w.index + 1}: pid {w.proc.pid}, device {w.device}, log {w.log}")
        with Store.open(resolve_url(settings.db, settings.output_dir), create=False) as store:
            _follow(store, run_id, outcome.workers, echo)
    except KeyboardInterrupt:
        _interrupt(outcome.workers)
        outcome.exit_code = 130
        return outcome
    finally:
        announce.unlink(missing_ok=True)
    codes = [w.proc.wait() for w in outcome.workers]
    failed = [w for w, code in zip(outcome.workers, codes, strict=True) if code != 0]
    for w in failed:
        echo(f"Worker {w.index + 1} (pid {w.proc.pid}) ended with exit status "
             f"{w.proc.returncode}:\n{_tail(w.log)}")  # fmt: skip
    outcome.exit_code = 130 if any(c == 130 for c in codes) else (1 if failed else 0)
    return outcome


def _start(
    settings: RunSettings,
    index: int,
    devices: Sequence[str],
    folder: Path,
    stamp: str,
    announce: Path | None,
) -> WorkerProcess:
    device = devices[index] if devices else settings.device
    child_device, env_extra = _device_env(device)
    child = settings.model_copy(update={"device": child_device or settings.device})
    settings_file = folder / f"{stamp}_worker{index + 1}.json"
    settings_file.write_text(child.model_dump_json())
    log = folder / f"{stamp}_worker{index + 1}.log"
    command = [sys.executable, "-m", "cobra_eval.parallel", str(settings_file)]
    if announce is not None:
        command.append(str(announce))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env_extra},
            start_new_session=True,  # Ctrl-C goes to us; each worker gets exactly one interrupt
        )  # fmt: skip
    return WorkerProcess(index, device, log, proc)


def _wait_for_run_id(first: WorkerProcess, announce: Path) -> str | None:
    while True:
        text = announce.read_text().strip() if announce.exists() else ""
        if text:
            return text
        if first.proc.poll() is not None:
            return None
        time.sleep(0.05)


def _follow(
    store: Any, run_id: str, workers: list[WorkerProcess], echo: Callable[[str], Any]
) -> None:
    """Print the run's progress lines and checkpoints until every worker has stopped."""
    from sqlalchemy import select

    from cobra_eval.store.repository import CHECKPOINT

    shown: dict[str, int] = {}
    last_checkpoint = 0
    while True:
        running = any(w.proc.poll() is None for w in workers)
        methods = store.run_methods(run_id)
        totals = {m.method: m.total_planned for m in methods}
        for progress in methods:
            total = progress.total_planned
            done = store.count_results(run_id, progress.method, limit=total)
            if progress.method not in shown:
                echo(f"== {progress.method}: {done}/{total} samples done, "
                     f"{len(workers)} workers ==")  # fmt: skip
            elif done > shown[progress.method]:
                echo(f"[{clock()}] Processed {done}/{total} samples...")
            shown[progress.method] = done
        with store.reader.connect() as conn:
            rows = conn.execute(
                select(CHECKPOINT.c.id, CHECKPOINT.c.method, CHECKPOINT.c.count, CHECKPOINT.c.path)
                .where(CHECKPOINT.c.run_id == run_id, CHECKPOINT.c.id > last_checkpoint,
                       CHECKPOINT.c.is_final.is_(False))
                .order_by(CHECKPOINT.c.id)
            ).all()  # fmt: skip
        for row in rows:
            last_checkpoint = row.id
            # a method started since this poll's read is read now
            total = totals.get(row.method)
            if total is None:
                total = next((p.total_planned for p in store.run_methods(run_id, row.method)), 0)
            echo(f"  → Checkpoint saved: {Path(row.path).name} ({row.count}/{total} samples)")
        if not running:
            return
        time.sleep(POLL_S)


def summary_lines(settings: RunSettings, run_id: str) -> list[str]:
    """What the run looks like now, from the database: per method progress and corpus scores."""
    from types import SimpleNamespace

    from cobra_eval.metrics import CorpusScores
    from cobra_eval.progress import metrics_table
    from cobra_eval.store import Store, resolve_url
    from cobra_eval.store.checkpoint_io import final_name, method_dir
    from cobra_eval.store.scores import latest_corpus_metrics

    lines, methods = [], []
    with Store.open(resolve_url(settings.db, settings.output_dir), create=False) as store:
        for p in store.method_progress(run_id):
            done = store.count_results(run_id, p.method, limit=p.total_planned)
            failed = f", {p.failed} failed (retried on resume)" if p.failed else ""
            final = method_dir(settings.output_dir, run_id, p.method) / final_name(p.method)
            lines.append(f"Done: {p.method} {done}/{p.total_planned} samples{failed} -> {final}")
            stored = latest_corpus_metrics(store, run_id, p.method, scope="final")
            corpus = CorpusScores(stored.n_samples, stored.scores) if stored else None
            methods.append(SimpleNamespace(method=p.method, corpus=corpus))
        shares = ", ".join(f"{w.rsplit(':', 1)[-1]}: {n}" for w, n in store.workers(run_id).items())
        lines.append(f"Samples per worker process (pid: samples): {shares}")
        lines += metrics_table(SimpleNamespace(methods=methods))
        lines.append(f"Run {run_id} in {store.display}")
    return lines


def _interrupt(workers: list[WorkerProcess]) -> None:
    """One interrupt to each worker; they save and stop (killed after a grace period)."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    for w in workers:
        try:
            w.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join("  " + x for x in log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "  (no log)"


def _worker_main(argv: Sequence[str]) -> int:
    """One worker: run the settings in argv[0]; announce the run id to argv[1] if given."""
    from cobra_eval.interrupts import patient_interrupts
    from cobra_eval.progress import LineReporter
    from cobra_eval.runner import Interrupted, run_evaluation

    settings = RunSettings.model_validate_json(Path(argv[0]).read_text())
    announce = Path(argv[1]) if len(argv) > 1 else None

    def tell(run_id: str) -> None:
        if announce is not None:
            partial = announce.with_suffix(".part")
            partial.write_text(run_id)
            partial.replace(announce)  # the parent never reads half an id

    try:
        # a worker stopped by SIGTERM (a scheduler signals every process) stops as cleanly
        with patient_interrupts():
            summary = run_evaluation(settings, reporter=LineReporter(), on_run=tell)
    except Interrupted as exc:
        print(str(exc), flush=True)
        return 130
    except KeyboardInterrupt:
        print("Interrupted: every committed sample is kept.", flush=True)
        return 130
    except CobraEvalError as exc:
        print(f"Error: {exc}", flush=True)
        return 1
    for item in summary.methods:
        print(f"Done: {item.method} {item.processed}/{item.total} samples", flush=True)
    return 0


if __name__ == "__main__":
    freeze_heap_at_exit()
    sys.exit(_worker_main(sys.argv[1:]))
