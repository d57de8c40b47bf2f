"""The batch finisher: in order, in the background, without holding up the model's thread."""

from __future__ import annotations

import threading

import pytest

from cobra_eval.finisher import BatchFinisher

WAIT_S = 10.0


def test_jobs_run_in_order_and_submits_wait_only_beyond_max_pending() -> None:
    done: list[int] = []
    gate = threading.Event()

    def job(k: int) -> None:
        if k == 0:
            assert gate.wait(WAIT_S)
        done.append(k)

    with BatchFinisher(overlap=True, max_pending=3) as finisher:
        for k in range(3):  # the first blocks; the other two queue behind it
            finisher.submit(lambda k=k: job(k), holds=[10 * k, 10 * k + 1])
        assert finisher.holding() == [0, 1, 10, 11, 20, 21]
        fourth = threading.Thread(target=finisher.submit, args=(lambda: job(3), [30]))
        fourth.start()
        fourth.join(0.3)
        assert fourth.is_alive()  # a fourth would exceed max_pending: it waits for the first
        gate.set()
        fourth.join(WAIT_S)
        assert not fourth.is_alive()
        finisher.wait()
        assert done == [0, 1, 2, 3]
        assert finisher.holding() == []


def test_a_failure_is_raised_once_waited_for_and_the_jobs_behind_it_do_not_run() -> None:
    done: list[int] = []
    gate = threading.Event()

    def fail() -> None:
        assert gate.wait(WAIT_S)
        raise RuntimeError("database is locked")

    with BatchFinisher(overlap=True, max_pending=4) as finisher:
        finisher.submit(fail, holds=[1])
        finisher.submit(lambda: done.append(2), holds=[2])
        gate.set()
        with pytest.raises(RuntimeError, match="database is locked"):
            finisher.wait()
        with pytest.raises(RuntimeError, match="database is locked"):
            finisher.submit(lambda: done.append(3))
    assert done == []


def test_without_overlap_a_job_runs_when_submitted() -> None:
    done: list[str] = []
    finisher = BatchFinisher(overlap=False, max_pending=8)
    finisher.submit(lambda: done.append(threading.current_thread().name), holds=[1])
    assert done == [threading.current_thread().name]
    assert finisher.holding() == []


def test_max_pending_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        BatchFinisher(overlap=True, max_pending=0)


@pytest.mark.parametrize("queued", [False, True], ids=["before-queueing", "after-queueing"])
def test_a_ctrl_c_inside_submit_leaves_the_job_announced_and_it_runs_once(
    queued: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The samples a Ctrl-C announces are those committed: a job stopped in submit, before
    or after the executor queued it, is held, and the wait that follows runs it once."""
    done: list[int] = []
    gate = threading.Event()

    def job() -> None:
        assert gate.wait(WAIT_S)
        done.append(7)

    with BatchFinisher(overlap=True, max_pending=4) as finisher:
        executor = finisher._executor
        assert executor is not None
        submit = executor.submit

        def interrupted(fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            if queued:
                submit(fn, *args, **kwargs)
            raise KeyboardInterrupt

        monkeypatch.setattr(executor, "submit", interrupted)
        with pytest.raises(KeyboardInterrupt):
            finisher.submit(job, holds=[7, 8])
        monkeypatch.setattr(executor, "submit", submit)
        assert finisher.holding() == [7, 8]
        gate.set()
        finisher.wait()
        assert finisher.holding() == []
    assert done == [7]
