"""Running, resuming and extending evaluations from the command line, as a user does."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3

import pytest

from cobra_eval.cli import main
from tests.conftest import World, load_json, run_cli_process

pytestmark = pytest.mark.databases

LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] Processed (\d+)/(\d+) samples\.\.\.$", re.M)


def processed_numbers(output: str) -> list[int]:
    return [int(m.group(1)) for m in LINE.finditer(output)]


def captions(world: World, method: str = "baseline") -> dict[int, str]:
    return dict(
        world.rows("SELECT image_id, generated_caption FROM sample_result WHERE method = ?", method)
    )


def test_a_run_commits_every_sample_and_prints_the_guides_lines(world: World, cli) -> None:
    result = cli(*world.run_args("--num_samples", "25", "--checkpoint_interval", "10"))
    assert result.exit_code == 0, result.output
    assert re.search(r"^Starting generation at \d\d:\d\d:\d\d\.\.\.$", result.output, re.M)
    assert processed_numbers(result.output) == list(range(1, 26))
    saved = re.findall(
        r"^  → Checkpoint saved: (checkpoint_baseline_(\d+)_\d{8}_\d{6}\.json) "
        r"\((\d+)/25 samples\)$",
        result.output,
        re.M,
    )
    assert [(count, shown) for _, count, shown in saved] == [("10", "10"), ("20", "20")]
    run_id = world.only_run_id()
    assert re.fullmatch(r"run_\d{8}_\d{6}", run_id)
    assert world.rows("SELECT COUNT(*), COUNT(DISTINCT image_id) FROM sample_result") == [(25, 25)]
    assert world.rows("SELECT status FROM run_method") == [("finished",)]
    folder = world.method_dir(run_id, "baseline")
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [saved[0][0], saved[1][0], "checkpoint_baseline_latest.json", "results_baseline.json"]
    )
    final = load_json(folder / "results_baseline.json")
    assert final["meta"]["is_checkpoint"] is False
    assert final["checkpoint_info"] == {"processed_count": 25, "remaining_count": 0}
    assert f"Run {run_id} in {world.shown_as}" in result.output


def test_every_sample_row_has_its_passes_and_provenance(world: World, cli) -> None:
    cli(*world.run_args("--num_samples", "4", "--method", "scratchpad"))
    rows = world.rows(
        "SELECT r.worker, p.name, p.raw_output, p.caption, r.generated_caption, r.reasoning_trace "
        "FROM sample_result r JOIN sample_pass p ON p.result_id = r.id"
    )
    assert len(rows) == 4
    for worker, name, raw, pass_caption, caption, reasoning in rows:
        assert re.fullmatch(r".+@.+:\d+", worker)
        assert name == "scratchpad"
        assert raw.endswith("Caption: " + caption)
        assert pass_caption == caption and caption
        assert reasoning.startswith("Objects:")
    assert world.rows("SELECT created_by, tool_version FROM run")[0][1] == "0.1.0"


def test_resume_skips_finished_samples_using_the_database_alone(world: World, cli) -> None:
    args = world.run_args("--num_samples", "30", "--checkpoint_interval", "10")
    first = cli(*world.run_args("--num_samples", "12", "--checkpoint_interval", "10"))
    assert first.exit_code == 0
    run_id = world.only_run_id()
    for path in world.out.rglob("*.json"):
        path.unlink()
    result = cli(*args, "--resume_from_checkpoint")
    assert result.exit_code == 0, result.output
    assert f"Found checkpoint: run {run_id} in {world.shown_as}" in result.output
    assert "Loaded checkpoint: 12 samples processed, 18 remaining" in result.output
    assert processed_numbers(result.output) == list(range(13, 31))
    assert world.only_run_id() == run_id
    assert world.rows("SELECT COUNT(*), COUNT(DISTINCT image_id) FROM sample_result") == [(30, 30)]
    # the checkpoints continue the count: 20 and 30 (10 was written before and deleted)
    counts = sorted(
        int(p.name.split("_")[2]) for p in world.checkpoints() if "latest" not in p.name
    )
    assert counts == [20, 30]


@pytest.mark.sqlite_only
def test_resume_rebuilds_a_lost_database_from_the_newest_checkpoint(world: World, cli) -> None:
    cli(*world.run_args("--num_samples", "25", "--checkpoint_interval", "10"))
    run_id = world.only_run_id()
    reference = captions(world)
    world.db.unlink()
    for side in world.out.glob("cobra_eval.db-*"):
        side.unlink()
    (world.method_dir(run_id, "baseline") / "results_baseline.json").unlink()
    (world.method_dir(run_id, "baseline") / "checkpoint_baseline_latest.json").unlink()
    result = cli(*world.run_args("--num_samples", "25", "--resume_from_checkpoint"))
    assert result.exit_code == 0, result.output
    assert re.search(
        r"^Found checkpoint: checkpoint_baseline_20_\d{8}_\d{6}\.json$", result.output, re.M
    )
    assert "Loaded checkpoint: 20 samples processed, 5 remaining" in result.output
    assert processed_numbers(result.output) == [21, 22, 23, 24, 25]
    assert world.only_run_id() == run_id
    assert captions(world) == reference


def test_a_resume_of_fewer_samples_than_planned_counts_only_those_it_asks_for(
    world: World, cli
) -> None:
    cli(*world.run_args("--num_samples", "6"))
    fewer = cli(*world.run_args("--num_samples", "4", "--resume_from_checkpoint"))
    assert fewer.exit_code == 0, fewer.output
    assert "Loaded checkpoint: 4 samples processed, 0 remaining" in fewer.output
    assert processed_numbers(fewer.output) == []
    more = cli(*world.run_args("--num_samples", "8", "--resume_from_checkpoint"))
    assert more.exit_code == 0, more.output
    assert "Loaded checkpoint: 6 samples processed, 2 remaining" in more.output
    assert processed_numbers(more.output) == [7, 8]
    assert world.rows("SELECT COUNT(*) FROM sample_result") == [(8,)]


def test_resume_with_nothing_to_resume_starts_a_new_run(world: World, cli) -> None:
    result = cli(*world.run_args("--num_samples", "3", "--resume_from_checkpoint"))
    assert result.exit_code == 0, result.output
    assert "No checkpoint found in" in result.output
    assert world.rows("SELECT COUNT(*) FROM sample_result") == [(3,)]


def test_resume_of_a_run_id_never_started_says_it_starts_it(world: World, cli) -> None:
    cli(*world.run_args("--num_samples", "2", "--run_id", "first"))
    args = world.run_args("--num_samples", "3", "--resume_from_checkpoint", "--run_id", "frist")
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert "No checkpoint of run frist found in" in result.output
    assert "starting it as a new run" in result.output
    assert world.rows("SELECT run_id, COUNT(*) FROM sample_result GROUP BY run_id") == [
        ("first", 2),
        ("frist", 3),
    ]
    # resumed again, it is found
    again = cli(*args)
    assert "Found checkpoint: run frist" in again.output


def test_resume_refuses_a_run_of_this_folder_with_another_config(world: World, cli) -> None:
    cli(*world.run_args("--num_samples", "5", "--max_new_tokens", "32"))
    before = world.rows("SELECT COUNT(*) FROM sample_result")
    result = cli(
        *world.run_args(
            "--num_samples",
            "5",
            "--max_new_tokens",
            "64",
            "--seed",
            "3",
            "--resume_from_checkpoint",
        )
    )
    assert result.exit_code == 1
    assert "was made with a different configuration:" in result.output
    assert "generation.max_new_tokens: 32 (stored) != 64 (now)" in result.output
    assert "generation.seed: 0 (stored) != 3 (now)" in result.output
    assert "--fresh" in result.output
    assert world.rows("SELECT COUNT(*) FROM sample_result") == before
    assert world.rows("SELECT COUNT(*) FROM run") == [(1,)]


def test_fresh_starts_a_new_run_despite_a_matching_one(world: World, cli) -> None:
    cli(*world.run_args("--num_samples", "3"))
    result = cli(*world.run_args("--num_samples", "3", "--fresh"))
    assert result.exit_code == 0
    assert world.rows("SELECT COUNT(*) FROM run") == [(2,)]
    assert world.rows("SELECT COUNT(*) FROM sample_result") == [(6,)]


def test_run_id_names_a_run_and_extending_it_adds_samples(world: World, cli) -> None:
    assert cli(*world.run_args("--num_samples", "10", "--run_id", "nightly")).exit_code == 0
    first = captions(world)
    result = cli(*world.run_args("--num-samples", "15", "--run-id", "nightly"))
    assert result.exit_code == 0, result.output
    assert "Loaded checkpoint: 10 samples processed, 5 remaining" in result.output
    assert processed_numbers(result.output) == [11, 12, 13, 14, 15]
    after = captions(world)
    assert {k: after[k] for k in first} == first and len(after) == 15
    final = load_json(world.method_dir("nightly", "baseline") / "results_baseline.json")
    assert final["checkpoint_info"] == {"processed_count": 15, "remaining_count": 0}
    assert [r["image_id"] for r in final["results"]] == [1000 + 7 * k for k in range(15)]


def test_method_all_runs_each_method_with_its_own_checkpoints_and_resume(world: World, cli) -> None:
    result = cli(
        *world.run_args("--num_samples", "10", "--method", "all", "--checkpoint_interval", "5")
    )
    assert result.exit_code == 0, result.output
    run_id = world.only_run_id()
    assert world.rows(
        "SELECT method, COUNT(*) FROM sample_result GROUP BY method ORDER BY method"
    ) == [("baseline", 10), ("llava_cot", 10), ("scratchpad", 10), ("scratchpad_compare", 10)]
    for method in ("baseline", "scratchpad", "llava_cot", "scratchpad_compare"):
        folder = world.method_dir(run_id, method)
        assert len(list(folder.glob(f"checkpoint_{method}_*.json"))) == 3  # 5, 10, latest
    # a later baseline-only resume continues the same run
    again = cli(*world.run_args("--num_samples", "12", "--resume_from_checkpoint"))
    assert again.exit_code == 0, again.output
    assert world.only_run_id() == run_id
    assert world.rows(
        "SELECT method, COUNT(*) FROM sample_result GROUP BY method ORDER BY method"
    ) == [("baseline", 12), ("llava_cot", 10), ("scratchpad", 10), ("scratchpad_compare", 10)]
    # every method of a resumed --method all counts its own progress (the first method's
    # count is taken before the loop; the others' when they start)
    rest = cli(
        *world.run_args("--num_samples", "12", "--method", "all", "--resume_from_checkpoint")
    )
    assert rest.exit_code == 0, rest.output
    loaded = [line for line in rest.output.splitlines() if line.startswith("Loaded checkpoint")]
    assert (
        loaded
        == ["Loaded checkpoint: 12 samples processed, 0 remaining"]
        + ["Loaded checkpoint: 10 samples processed, 2 remaining"] * 3
    ), rest.output
    assert world.rows(
        "SELECT method, COUNT(*) FROM sample_result GROUP BY method ORDER BY method"
    ) == [("baseline", 12), ("llava_cot", 12), ("scratchpad", 12), ("scratchpad_compare", 12)]


def test_missing_images_stop_the_run_before_generation_or_are_skipped(world: World, cli) -> None:
    hidden = world.root / "hidden"
    hidden.mkdir()
    victim = world.dataset.parent / "img_001007.png"
    shutil.move(victim, hidden / victim.name)
    refused = cli(*world.run_args("--num_samples", "4"))
    assert refused.exit_code == 1
    assert "1 of the selected samples cannot be used" in refused.output
    assert f"missing image files: 1 (e.g. 1007: {victim})" in refused.output
    assert "--skip_missing" in refused.output
    assert not world.db.exists()  # refused before anything was created
    skipped = cli(*world.run_args("--num_samples", "4", "--skip_missing"))
    assert skipped.exit_code == 0, skipped.output
    assert (
        "Skipped with --skip_missing: 1 missing image files (recorded in the run)" in skipped.output
    )
    ids = [i for (i,) in world.rows("SELECT image_id FROM sample_result ORDER BY image_id")]
    assert len(ids) == 4 and 1007 not in ids
    (settings,) = world.rows("SELECT settings FROM run_method")
    assert json.loads(settings[0])["skipped"] == {
        "missing image files": {"count": 1, "first": [1007]}
    }


def test_corrupt_images_are_failed_samples_retried_on_resume(world: World, cli) -> None:
    victim = world.dataset.parent / "img_001007.png"
    good = victim.read_bytes()
    victim.write_bytes(b"not a png at all")
    result = cli(*world.run_args("--num_samples", "4"))
    assert result.exit_code == 0, result.output
    assert "Done: baseline 4/4 samples, 1 failed (retried on resume)" in result.output
    ((status, error),) = world.rows("SELECT status, error FROM sample_result WHERE image_id = 1007")
    assert status == "failed" and "img_001007.png" in error
    victim.write_bytes(good)
    result = cli(*world.run_args("--num_samples", "4", "--resume_from_checkpoint"))
    assert result.exit_code == 0, result.output
    assert world.rows("SELECT status, COUNT(*) FROM sample_result GROUP BY status") == [("ok", 4)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num_samples", "0"], "Invalid value for '--num_samples'"),
        (["--num_samples", "-3"], "Invalid value for '--num_samples'"),
        (["--num_samples", "ten"], "'ten' is not a valid integer"),
        (["--checkpoint_interval", "-1"], "Invalid value for '--checkpoint_interval'"),
        (
            ["--method", "nonsense"],
            "'nonsense' is not one of 'baseline', 'scratchpad', 'llava_cot', "
            "'scratchpad_compare', 'all'",
        ),
        (["--num_samples", "41"], "--num_samples 41 is larger than the dataset"),
        (["--run_id", "../escape"], "Invalid value for '--run_id'"),
        (["--backend", "nowhere:Thing"], "cannot import backend module 'nowhere'"),
        (["--fresh", "--resume_from_checkpoint"], "--fresh starts a new run"),
    ],
)
def test_bad_flags_give_one_clear_error_and_change_nothing(
    world: World, cli, args: list[str], message: str
) -> None:
    result = cli(*world.run_args(*args))
    assert result.exit_code in (1, 2)
    assert message in result.output
    assert "Traceback" not in result.output
    assert not world.db.exists() or world.rows("SELECT COUNT(*) FROM sample_result") == [(0,)]


def test_help_teaches_with_a_worked_example(cli) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    assert "Worked example" in result.output
    assert "--num_samples, --num-samples" in result.output
    # every other command is listed with what it does, and its own --help works
    listed = result.output.split("Other commands")[1]
    others = [name for name in main.commands if name != "run"]
    assert {"query", "compare", "report", "merge"} <= set(others)
    for command in others:
        assert re.search(rf"^  {command} +\S", listed, re.MULTILINE), command
        assert cli(command, "--help").exit_code == 0


@pytest.mark.sqlite_only
def test_real_process_run_and_no_heavy_imports_for_help(world: World) -> None:
    done = run_cli_process(*world.run_args("--num_samples", "5"))
    assert done.returncode == 0, done.stderr
    assert processed_numbers(done.stdout) == [1, 2, 3, 4, 5]
    con = sqlite3.connect(world.db)
    assert con.execute("SELECT COUNT(*) FROM sample_result").fetchone() == (5,)
    con.close()
    probe = run_cli_process("--version")
    assert probe.returncode == 0 and "cobra_eval, version" in probe.stdout
    import subprocess
    import sys

    heavy = "('torch', 'transformers', 'sqlalchemy')"
    code = f"import sys, cobra_eval.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.sqlite_only
def test_a_run_process_skips_shutdown_garbage_collection_and_still_leaves_everything(
    world: World,
) -> None:
    # Shutdown's full collections over transformers and the model took over a second
    # after every run (benchmarks.run_overhead measures it). A hook registered before
    # main runs after main's own (atexit is last in, first out) and sees the freeze.
    import subprocess
    import sys

    from tests.conftest import REPO, subprocess_env

    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0))\n"
        "from cobra_eval.cli import main\n"
        "sys.argv = ['cobra_eval', *sys.argv[1:]]\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *world.run_args("--num_samples", "3")],
        capture_output=True, text=True, timeout=120, env=subprocess_env(), cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("frozen at exit: True")
    assert processed_numbers(done.stdout) == [1, 2, 3]
    final = world.method_dir(world.only_run_id(), "baseline") / "results_baseline.json"
    assert len(load_json(final)["results"]) == 3
    assert world.rows("SELECT COUNT(*) FROM sample_result") == [(3,)]


def test_read_commands_never_create_a_database(tmp_path, cli) -> None:
    for args in (["runs"], ["export", "some_run"]):
        result = cli(*args, "--output_dir", str(tmp_path / "nothing_here"))
        assert result.exit_code == 1
        assert "no results database at" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("signame", "presses"),
    [("SIGINT", 1), ("SIGINT", 2), ("SIGTERM", 1)],
    ids=["ctrl-c once", "ctrl-c twice", "sigterm"],
)
def test_ctrl_c_keeps_every_committed_sample_and_says_how_to_continue(
    world: World, signame: str, presses: int
) -> None:
    """Ctrl-C, and SIGTERM as `kill`, `timeout` or a scheduler send it, stop cleanly."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO, as_foreground, subprocess_env

    proc = subprocess.Popen(
        [sys.executable, "-m", "cobra_eval", *world.run_args("--num_samples", "30",
                                                             "--batch_size", "2")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env=subprocess_env(COBRA_TEST_DELAY="0.2"), preexec_fn=as_foreground,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.extend(processed_numbers(line))
        if len(seen) >= 4:
            proc.send_signal(getattr(signal, signame))
            # an impatient second press, while the batches generated are committed
            for _ in range(presses - 1):
                time.sleep(0.01)
                proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)
    seen.extend(processed_numbers(out))
    assert proc.returncode == 130
    assert "Interrupted:" in err and "--resume_from_checkpoint" in err
    assert "Traceback" not in err
    (rows,) = world.rows("SELECT COUNT(*) FROM sample_result")[0]
    assert rows >= max(seen)
    assert world.rows("SELECT status FROM run_method") == [("interrupted",)]
    done = run_cli_process(*world.run_args("--num_samples", "30", "--resume_from_checkpoint"))
    assert done.returncode == 0, done.stderr
    assert world.rows("SELECT COUNT(DISTINCT image_id), COUNT(*) FROM sample_result") == [(30, 30)]


@pytest.mark.slow
@pytest.mark.sqlite_only
def test_ctrl_c_while_meteor_loads_says_it_commits_what_was_generated_first(
    world: World, tmp_path
) -> None:
    import signal
    import subprocess
    import sys
    import time

    from cobra_eval.interrupts import STILL_STOPPING
    from tests.conftest import REPO, as_foreground, subprocess_env
    from tests.stand_in import GENLOG_ENV

    log = tmp_path / "generated.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cobra_eval", *world.run_args("--num_samples", "30",
                                                             "--batch_size", "2",
                                                             "--metrics", "meteor")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env=subprocess_env(**{GENLOG_ENV: str(log)}), preexec_fn=as_foreground,
    )  # fmt: skip
    # METEOR's JVM takes seconds to load: nothing can be scored (or committed) before, and
    # the model goes on meanwhile; stop it a few batches in
    deadline = time.monotonic() + 60
    while not (log.exists() and len(log.read_text().splitlines()) >= 6):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    pressed = time.monotonic()
    # an impatient second press while the stop waits for METEOR: it says so, and waits too
    time.sleep(0.03)  # the first press is handled by then: two would count as one
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    stopped_s = time.monotonic() - pressed
    assert proc.returncode == 130, err
    found = re.search(
        r"^Stopping: first committing the (\d+) samples already generated$", out, re.M
    )
    assert found, out
    waiting = int(found[1])
    assert waiting >= 6
    assert "Interrupted:" in err and "Traceback" not in err, err
    assert err.count(STILL_STOPPING) == 1, (err, stopped_s)
    # every sample announced was scored and committed before the process ended; on a busy
    # machine METEOR may have been ready for a batch or two before the Ctrl-C (their lines
    # came first), and the echo model may have generated all 30 by then
    ((committed,),) = world.rows("SELECT COUNT(*) FROM sample_result")
    printed_before = len(re.findall(r"Processed \d+/30 samples", out[: found.start()]))
    assert waiting <= committed <= waiting + printed_before, (committed, printed_before)
    scored = "SELECT COUNT(DISTINCT result_id) FROM metric_value WHERE name = 'METEOR'"
    assert world.rows(scored) == [(committed,)]


@pytest.mark.sqlite_only
def test_the_database_can_live_elsewhere_by_flag_or_environment(
    world: World, cli, tmp_path
) -> None:
    by_env = tmp_path / "shared" / "team.db"
    result = cli(*world.run_args("--num_samples", "3"), env={"COBRA_EVAL_DB": str(by_env)})
    assert result.exit_code == 0, result.output
    assert not world.db.exists()
    by_flag = tmp_path / "other.db"
    result = cli(*world.run_args("--num_samples", "2", "--db", f"sqlite:///{by_flag}"))
    assert result.exit_code == 0, result.output
    for path, count in ((by_env, 3), (by_flag, 2)):
        con = sqlite3.connect(path)
        assert con.execute("SELECT COUNT(*) FROM sample_result").fetchone() == (count,)
        con.close()
    listed = cli("runs", "--format", "json", env={"COBRA_EVAL_DB": str(by_env)})
    assert [m["done"] for m in json.loads(listed.stdout)[0]["methods"]] == [3]
