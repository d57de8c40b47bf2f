"""The checkpoint JSON contract: shape, jq, import/export, and refusals that change nothing."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from cobra_eval.store.checkpoint_io import write_atomic
from tests.conftest import World, load_json

pytestmark = pytest.mark.databases

GUIDE_RESULT_KEYS = [
    "image_id", "reference_captions", "generated_caption", "reasoning_trace", "metadata", "metrics"
]  # fmt: skip


def hand_written(
    path: Path, ids: list[int], method: str = "baseline", config: dict | None = None
) -> Path:
    """A file in the guide's shape, as a person would write it."""
    doc = {
        "meta": {
            "timestamp": "2025-11-30T12:00:00",
            "config": config if config is not None else {"note": "written by hand"},
            "method": method,
            "samples_processed": len(ids),
            "total_samples": 10,
            "is_checkpoint": True,
        },
        "checkpoint_info": {"processed_count": len(ids), "remaining_count": 10 - len(ids)},
        "results": [
            {
                "image_id": i,
                "reference_captions": ["a cat", "a small cat"],
                "generated_caption": f"caption {i}",
                "reasoning_trace": "",
                "metadata": {},
                "metrics": {"CIDEr": 0.5},
            }
            for i in ids
        ],
    }
    path.write_text(json.dumps(doc))
    return path


def test_checkpoint_has_exactly_the_guides_shape(world: World, cli) -> None:
    cli(
        *world.run_args(
            "--num_samples", "15", "--checkpoint_interval", "5", "--method", "scratchpad"
        )
    )
    latest = world.checkpoints("scratchpad")[-1]
    assert latest.name == "checkpoint_scratchpad_latest.json"
    assert not latest.is_symlink()
    doc = load_json(latest)
    assert list(doc) == ["meta", "checkpoint_info", "results"]
    meta = doc["meta"]
    for key in (
        "timestamp",
        "config",
        "method",
        "samples_processed",
        "total_samples",
        "is_checkpoint",
    ):
        assert key in meta
    assert meta["method"] == "scratchpad" and meta["is_checkpoint"] is True
    assert (meta["samples_processed"], meta["total_samples"]) == (15, 15)
    assert doc["checkpoint_info"] == {"processed_count": 15, "remaining_count": 0}
    assert all(list(r) == GUIDE_RESULT_KEYS for r in doc["results"])
    assert doc["results"][0]["metadata"]["passes"][0]["name"] == "scratchpad"
    numbered = sorted(world.checkpoints("scratchpad")[:-1], key=lambda p: int(p.name.split("_")[2]))
    assert [load_json(p)["checkpoint_info"]["processed_count"] for p in numbered] == [5, 10, 15]
    assert latest.read_bytes() == numbered[-1].read_bytes()
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (latest, *numbered):  # as readable as any file the user creates
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_jq_reads_checkpoint_info_of_the_latest_checkpoint(world: World, cli) -> None:
    cli(*world.run_args("--num_samples", "12", "--checkpoint_interval", "5"))
    latest = next(world.out.glob("run_*/baseline/checkpoint_*_latest.json"))
    out = subprocess.run(
        ["jq", ".checkpoint_info", str(latest)], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == {"processed_count": 10, "remaining_count": 2}


def test_checkpoints_are_recorded_in_the_database(world: World, cli) -> None:
    cli(*world.run_args("--num_samples", "10", "--checkpoint_interval", "5"))
    rows = world.rows("SELECT count, is_final, path, bytes, sha256 FROM checkpoint ORDER BY id")
    assert [(r[0], r[1]) for r in rows] == [(5, 0), (10, 0), (10, 1)]
    import hashlib

    for _, _, path, size, digest in rows:
        data = Path(path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, digest)


def test_interval_zero_writes_no_checkpoint_but_commits_every_sample(world: World, cli) -> None:
    result = cli(*world.run_args("--num_samples", "12", "--checkpoint_interval", "0"))
    assert result.exit_code == 0
    assert "Checkpoint saved" not in result.output
    assert world.checkpoints() == []
    assert world.rows("SELECT COUNT(*) FROM sample_result") == [(12,)]


def test_atomic_write_never_leaves_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint_baseline_latest.json"
    write_atomic(target, b'{"old": true}')

    class Boom(Exception):
        pass

    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        raise Boom

    os.fsync = failing_fsync  # the write fails after the temp file has its bytes
    try:
        with pytest.raises(Boom):
            write_atomic(target, b'{"new": true, "padding": "' + b"x" * 10000 + b'"}')
    finally:
        os.fsync = real_fsync
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_export_import_export_is_byte_identical(world: World, cli, tmp_path: Path) -> None:
    cli(*world.run_args("--num_samples", "8", "--method", "scratchpad", "--run_id", "r1"))
    first = tmp_path / "first.json"
    assert cli("export", "r1", *world.db_option, "-o", str(first)).exit_code == 0
    other_db = tmp_path / "other.db"
    imported = cli("import", str(first), "--db", str(other_db))
    assert imported.exit_code == 0, imported.output
    assert imported.stdout.strip().splitlines()[-1] == "r1"
    second = tmp_path / "second.json"
    assert cli("export", "r1", "--db", str(other_db), "-o", str(second)).exit_code == 0
    a, b = load_json(first), load_json(second)
    assert a["meta"].pop("timestamp") and b["meta"].pop("timestamp")
    assert a == b
    assert len(first.read_bytes()) == len(second.read_bytes())
    assert sqlite3.connect(other_db).execute("SELECT COUNT(*) FROM sample_pass").fetchone() == (8,)
    # every planned sample is there: the imported run is as finished as the one exported
    (run,) = json.loads(cli("runs", "--db", str(other_db), "--format", "json").stdout)
    assert run["status"] == "finished"
    assert run["methods"] == [
        {"method": "scratchpad", "done": 8, "failed": 0, "total": 8, "status": "finished"}
    ]


def test_import_of_a_hand_written_file_creates_a_run(tmp_path: Path, cli) -> None:
    path = hand_written(tmp_path / "mine.json", [5, 6, 7])
    db = tmp_path / "x.db"
    result = cli("import", str(path), "--db", str(db))
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip().splitlines()[-1]
    assert "Imported 3 results of baseline (0 already stored); created run" in result.output
    con = sqlite3.connect(db)
    assert con.execute(
        "SELECT image_id, generated_caption FROM sample_result ORDER BY image_id"
    ).fetchall() == [(5, "caption 5"), (6, "caption 6"), (7, "caption 7")]
    assert con.execute("SELECT name, value FROM metric_value").fetchall() == [("CIDEr", 0.5)] * 3
    again = cli("import", str(path), "--db", str(db), "--run_id", run_id)
    assert "Imported 0 results of baseline (3 already stored); extended run" in again.output
    runs = cli("runs", "--db", str(db), "--format", "json")
    (run,) = json.loads(runs.stdout)
    assert run["run_id"] == run_id
    assert run["methods"] == [
        {"method": "baseline", "done": 3, "failed": 0, "total": 10, "status": "interrupted"}
    ]


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _truncated(hand_written(p, [1, 2])), "not valid JSON at line"),
        (lambda p: (p.write_text("[1, 2, 3]"), p)[1], "expected a JSON object with 'meta'"),
        (
            lambda p: (p.write_text('{"meta": {}, "results": []}'), p)[1],
            "missing 'checkpoint_info'",
        ),
        (
            lambda p: (
                p.write_text(
                    hand_written(p, [1]).read_text().replace('"image_id": 1', '"image_id": "one"')
                ),
                p,
            )[1],
            "results[0].image_id: Input should be a valid integer",
        ),
        (
            lambda p: (
                p.write_text(
                    hand_written(p, [1, 2]).read_text().replace('"image_id": 2', '"image_id": 1')
                ),
                p,
            )[1],
            "duplicate image_id in results: 1",
        ),
        (lambda p: p.parent / "does_not_exist.json", "no such file"),
    ],
    ids=[
        "truncated",
        "not-an-object",
        "missing-key",
        "wrong-type",
        "duplicate-ids",
        "missing-file",
    ],
)
def test_bad_files_are_refused_with_one_message_and_change_nothing(
    world: World, cli, tmp_path: Path, make, message: str
) -> None:
    cli(*world.run_args("--num_samples", "3"))
    before = world.dump()
    path = make(tmp_path / "bad.json")
    for args in (
        ["import", str(path), *world.db_option],
        world.run_args("--num_samples", "5", "--load_results", str(path)),
    ):
        result = cli(*args)
        assert result.exit_code == 1, result.output
        assert message in result.output
        assert "Traceback" not in result.output
        assert world.dump() == before


def test_load_results_continues_a_run_up_to_num_samples(world: World, cli, tmp_path: Path) -> None:
    cli(*world.run_args("--num_samples", "10", "--checkpoint_interval", "5", "--run_id", "src"))
    checkpoint = next(world.out.glob("src/baseline/checkpoint_baseline_5_*.json"))
    copy = tmp_path / checkpoint.name
    shutil.copy(checkpoint, copy)
    shutil.rmtree(world.out)
    world.lose_database()
    result = cli(*world.run_args("--num_samples", "10", "--load_results", str(copy)))
    assert result.exit_code == 0, result.output
    assert f"Found checkpoint: {copy.name}" in result.output
    assert "Loaded checkpoint: 5 samples processed, 5 remaining" in result.output
    assert world.rows("SELECT run_id, COUNT(*) FROM sample_result GROUP BY run_id") == [("src", 10)]


def test_load_results_refuses_another_config_naming_every_difference(
    world: World, cli, tmp_path: Path
) -> None:
    cli(*world.run_args("--num_samples", "4", "--run_id", "a", "--max_new_tokens", "16"))
    final = world.out / "a" / "baseline" / "results_baseline.json"
    before = world.dump()
    result = cli(
        *world.run_args(
            "--num_samples",
            "6",
            "--load_results",
            str(final),
            "--max_new_tokens",
            "17",
            "--temperature",
            "0.5",
        )
    )
    assert result.exit_code == 1
    assert "was made with a different configuration:" in result.output
    assert "generation.max_new_tokens: 16 (stored) != 17 (now)" in result.output
    assert "generation.temperature: 0.0 (stored) != 0.5 (now)" in result.output
    assert world.dump() == before


def test_load_results_refuses_a_file_of_another_method(world: World, cli) -> None:
    cli(*world.run_args("--num_samples", "4", "--run_id", "a", "--method", "scratchpad"))
    final = world.out / "a" / "scratchpad" / "results_scratchpad.json"
    before = world.dump()
    result = cli(*world.run_args("--num_samples", "6", "--load_results", str(final)))
    assert result.exit_code == 1
    assert "method: 'scratchpad' (stored) != 'baseline' (now)" in result.output
    assert "run with --method scratchpad to continue it" in result.output
    assert world.dump() == before


def test_import_into_a_run_of_another_config_is_refused(world: World, cli, tmp_path: Path) -> None:
    cli(*world.run_args("--num_samples", "3", "--run_id", "mine"))
    before = world.dump()
    path = hand_written(tmp_path / "x.json", [1, 2])
    result = cli("import", str(path), *world.db_option, "--run_id", "mine")
    assert result.exit_code == 1
    assert "(run mine) was made with a different configuration:" in result.output
    assert world.dump() == before


def test_export_and_runs_commands(world: World, cli) -> None:
    cli(*world.run_args("--num_samples", "6", "--method", "all", "--run_id", "both"))
    ambiguous = cli("export", "both", "--output_dir", str(world.out), *world.db_args)
    assert ambiguous.exit_code == 1
    assert (
        "run both has methods baseline, scratchpad, llava_cot, scratchpad_compare; "
        "choose one with --method" in ambiguous.output
    )
    out = cli(
        "export", "both", "--method", "scratchpad", "--output_dir", str(world.out), *world.db_args
    )
    doc = json.loads(out.stdout)
    assert doc["meta"]["method"] == "scratchpad" and len(doc["results"]) == 6
    assert cli("export", "nope", "--output_dir", str(world.out), *world.db_args).exit_code == 1
    table = cli("runs", "--output_dir", str(world.out), *world.db_args)
    assert table.exit_code == 0
    header, row = table.output.strip().splitlines()
    assert header.split() == ["RUN", "CREATED", "BY", "STATUS", "METHODS", "WORKERS"]
    assert row.startswith("both ") and "finished" in row
    import getpass
    import socket

    me = f"{getpass.getuser()}@{socket.gethostname()}"
    assert row.endswith(
        f"baseline 6/6, scratchpad 6/6, llava_cot 6/6, scratchpad_compare 6/6  {me}"
    )
