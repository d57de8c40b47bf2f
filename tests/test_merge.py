"""`merge SRC DEST`: laptops' SQLite files into the team's database, all or nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cobra_eval.store.engine import head_revision, make_engine, upgrade_schema
from cobra_eval.store.merge_source import MERGED_TABLES
from tests.conftest import World
from tests.pg_server import PgServer

MERGED = [
    "run", "run_method", "planned_sample", "sample_result", "sample_pass", "metric_value",
    "corpus_metric", "checkpoint", "cider_document_frequency", "generation_cache",
]  # fmt: skip
#: per-sample BLEU and CIDEr-D fill metric_value, corpus_metric and the document frequencies
SCORED = ("--metrics", "bleu,cider")


def laptop(world: World, cli, db: Path | str, *args: str) -> None:
    """One run of the real CLI with the stand-in backend into this database."""
    result = cli(*world.run_args(*args, "--db", str(db)))
    assert result.exit_code == 0, result.output


def merge(cli, *args: str, code: int = 0) -> Any:
    result = cli("merge", *[str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def dump(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def counts(db: Path | str) -> dict[str, int]:
    """Rows per merged table, read with the plain driver."""
    if isinstance(db, Path):
        con = sqlite3.connect(db)
        try:
            return {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in MERGED}
        finally:
            con.close()
    with psycopg.connect(db.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in MERGED}


def rows(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the merged tables, as stored."""
    con = sqlite3.connect(db)
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in MERGED}
    finally:
        con.close()


def pg_dump(url: str) -> list[Any]:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return [(t, conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()) for t in MERGED]


def exported(cli, db: Path | str, run_id: str, method: str = "baseline") -> dict[str, Any]:
    """The run's export, without the one field that is the time of the export."""
    result = cli("export", run_id, "--method", method, "--db", str(db))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["meta"].pop("timestamp")
    return doc


def two_laptops(world: World, cli, tmp_path: Path) -> tuple[Path, Path]:
    """A: r1 (8 samples, one failed on a corrupt image) and r2. B: a copy of A where r1 was
    extended to 16 with the image repaired, and r3."""
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    victim = world.dataset.parent / "img_001007.png"
    good = victim.read_bytes()
    victim.write_bytes(b"not a png at all")
    laptop(world, cli, a, "--run_id", "r1", "--num_samples", "8", "--checkpoint_interval", "4",
           *SCORED)  # fmt: skip
    victim.write_bytes(good)
    laptop(world, cli, a, "--run_id", "r2", "--num_samples", "5", "--method", "scratchpad")
    with sqlite3.connect(a) as src, sqlite3.connect(b) as dst:
        src.backup(dst)
    laptop(world, cli, b, "--run_id", "r1", "--num_samples", "16", *SCORED)
    laptop(world, cli, b, "--run_id", "r3", "--num_samples", "4", "--max_new_tokens", "32")
    return a, b


def test_merge_into_a_new_file_copies_every_table_and_exports_the_same(
    world: World, cli, tmp_path: Path
) -> None:
    a, _ = two_laptops(world, cli, tmp_path)
    team = tmp_path / "team" / "team.db"
    result = merge(cli, a, team)
    assert result.output.splitlines()[1:] == [
        "  runs: 2 created (r1, r2)",
        "  plan: 2 methods added, 13 planned samples added",
        "  results: 13 copied",
        "  also copied: 15 corpus metrics, 4 checkpoints, 1 CIDEr-D document frequency sets",
        "  generation cache: 12 added",
    ]
    assert counts(team) == counts(a)
    assert counts(team)["metric_value"] > 0 and counts(team)["sample_pass"] == 12
    for run_id, method in (("r1", "baseline"), ("r2", "scratchpad")):
        assert exported(cli, team, run_id, method) == exported(cli, a, run_id, method)
    ((status, error),) = (
        sqlite3.connect(team)
        .execute("SELECT status, error FROM sample_result WHERE run_id = 'r1' AND image_id = 1007")
        .fetchall()
    )
    assert status == "failed" and "img_001007.png" in error


def test_second_laptop_extends_replaces_failures_and_merging_again_changes_nothing(
    world: World, cli, tmp_path: Path
) -> None:
    a, b = two_laptops(world, cli, tmp_path)
    team = tmp_path / "team.db"
    merge(cli, a, team)
    result = merge(cli, b, team, "--format", "json")
    report = json.loads(result.stdout)
    assert (report["runs_created"], report["runs_extended"], report["runs_unchanged"]) == (
        ["r3"],
        ["r1"],
        ["r2"],
    )
    # r1: 8 new samples, 1007 failed on A and ok on B, A's 7 others rescored by B's extension
    # (CIDEr-D's document frequencies of 16 planned images) or already present (r2, r3 new)
    assert report["results_copied"] == 8 + 4
    assert report["failed_replaced"] == 1
    assert report["rescored_replaced"] == 7
    assert report["results_present"] == 5
    assert exported(cli, team, "r1") == exported(cli, b, "r1")
    plan = sqlite3.connect(team).execute(
        "SELECT image_id FROM planned_sample WHERE run_id = 'r1' ORDER BY position"
    )
    assert [i for (i,) in plan] == [1000 + 7 * k for k in range(16)]
    runs = json.loads(cli("runs", "--db", str(team), "--format", "json").stdout)
    r1 = next(r for r in runs if r["run_id"] == "r1")
    assert r1["status"] == "finished"
    assert r1["methods"] == [
        {"method": "baseline", "done": 16, "failed": 0, "total": 16, "status": "finished"}
    ]

    before = dump(team)
    for src in (a, b):  # A's failed 1007 does not undo B's success
        again = json.loads(merge(cli, src, team, "--format", "json").stdout)
        assert again["changed"] is False and again["results_copied"] == 0
    assert again["runs_unchanged"] == ["r1", "r2", "r3"]
    assert dump(team) == before
    text = merge(cli, a, team).output
    assert "everything was already present, nothing changed" in text
    assert "1 failed in SRC, DEST's kept" in text


def test_sqlite_to_postgresql_and_back(
    world: World, cli, tmp_path: Path, postgres: PgServer
) -> None:
    a, b = two_laptops(world, cli, tmp_path)
    url = postgres.database()
    merge(cli, a, url)
    merge(cli, b, url)
    runs = cli("runs", "--db", url, "--format", "json")
    assert runs.exit_code == 0
    assert sorted(r["run_id"] for r in json.loads(runs.stdout)) == ["r1", "r2", "r3"]
    assert exported(cli, url, "r1") == exported(cli, b, "r1")
    before = pg_dump(url)
    assert "nothing changed" in merge(cli, b, url).output
    assert pg_dump(url) == before

    back = tmp_path / "back.db"
    merge(cli, url, back)
    assert counts(back) == counts(url)
    for run_id, method in (("r1", "baseline"), ("r2", "scratchpad"), ("r3", "baseline")):
        assert exported(cli, back, run_id, method) == exported(cli, url, run_id, method)


def test_a_round_trip_through_postgresql_keeps_every_value(
    world: World, cli, tmp_path: Path, postgres: PgServer
) -> None:
    a = tmp_path / "a.db"
    laptop(world, cli, a, "--run_id", "r1", "--num_samples", "6", "--method", "scratchpad",
           "--checkpoint_interval", "3", *SCORED)  # fmt: skip
    url = postgres.database()
    # timestamps are handed back in the session's zone: they must still land as UTC
    with psycopg.connect(postgres.admin_conninfo, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{url.rsplit('/', 1)[1]}\" SET timezone = 'Asia/Kolkata'")
    merge(cli, a, url)
    back = tmp_path / "back.db"
    merge(cli, url, back)
    assert rows(back) == rows(a)


def test_conflicts_refuse_the_whole_merge_and_change_nothing(
    world: World, cli, tmp_path: Path
) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    laptop(world, cli, a, "--run_id", "r1", "--num_samples", "6", "--checkpoint_interval", "0")
    laptop(world, cli, b, "--run_id", "r1", "--num_samples", "6", "--max_new_tokens", "32")
    team = tmp_path / "team.db"
    merge(cli, b, team)
    # A also holds a run the team lacks: refused, it does not land either
    laptop(world, cli, a, "--run_id", "r9", "--num_samples", "3")
    before, src_before = dump(team), dump(a)
    refused = merge(cli, a, team, code=1)
    assert refused.output.splitlines()[:2] == [
        "Error: merge refused: 1 conflict (1 run), DEST unchanged",
        "  run r1 has another configuration in DEST (fingerprint "
        f"{fingerprint(team, 'r1')} in DEST, {fingerprint(a, 'r1')} in SRC; "
        "generation.max_new_tokens: 32 in DEST, 128 in SRC)",
    ]
    assert dump(team) == before and dump(a) == src_before

    # the same run configuration, but the method was given another prompt
    c, prompts = tmp_path / "c.db", tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"baseline": {"caption": "Describe it in five words."}}))
    laptop(world, cli, c, "--run_id", "r1", "--num_samples", "2", "--max_new_tokens", "32",
           "--prompts", str(prompts))  # fmt: skip
    lines = merge(cli, c, team, code=1).output.splitlines()
    assert lines[0] == "Error: merge refused: 1 conflict (1 method), DEST unchanged"
    assert lines[1].startswith("  method r1/baseline has another configuration in DEST")
    assert lines[1].endswith(
        "prompts.caption: 'Describe this image in one sentence.' in DEST, "
        "'Describe it in five words.' in SRC)"
    )
    assert dump(team) == before

    # the same run on both sides, but the model said something else for every sample of A's copy
    team2 = tmp_path / "team2.db"
    merge(cli, a, team2)
    with sqlite3.connect(a) as con:
        con.execute("UPDATE sample_result SET generated_caption = 'a purple cow' "
                    "WHERE run_id = 'r1'")  # fmt: skip
    laptop(world, cli, a, "--run_id", "r8", "--num_samples", "2")
    before = dump(team2)
    lines = merge(cli, a, team2, code=1).output.splitlines()
    assert lines[0] == "Error: merge refused: 6 conflicts (6 samples), DEST unchanged"
    assert lines[1] == "  sample r1/baseline/1000 differs (ok in both, other caption)"
    assert lines[-2:] == [
        "  ... and 1 more sample",
        "Hint: --run RUN merges only the runs you name.",
    ]
    assert len(lines) == 8
    assert dump(team2) == before


def fingerprint(db: Path, run_id: str) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT fingerprint FROM run WHERE id = ?", (run_id,)).fetchone()[0][:8]
    finally:
        con.close()


def older_schema(path: Path) -> Path:
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    upgrade_schema(engine, url, "0002")
    engine.dispose()
    return path


@pytest.mark.parametrize(
    ("make_src", "message"),
    [
        (lambda d: d / "nothere.db", "no results database at {d}/nothere.db (SRC); nothing was"),
        (lambda d: (d / "folder.db").mkdir() or d / "folder.db", "is a directory"),
        (
            lambda d: older_schema(d / "old.db"),
            "has the older schema revision 0002 (head {head}); upgrade it first with: "
            "python -m cobra_eval db upgrade --db {d}/old.db",
        ),
    ],
    ids=["missing", "directory", "older-schema"],
)
def test_a_source_that_cannot_be_merged_is_refused_and_nothing_is_created(
    cli, tmp_path: Path, make_src, message: str
) -> None:
    src = make_src(tmp_path)
    if src.is_file():
        before = dump(src)
    result = merge(cli, src, tmp_path / "team.db", code=1)
    assert message.format(d=tmp_path, head=head_revision()) in result.output
    assert not (tmp_path / "team.db").exists()
    if src.is_file():
        assert dump(src) == before


def test_run_option_merges_only_those_runs(world: World, cli, tmp_path: Path) -> None:
    a, _ = two_laptops(world, cli, tmp_path)
    team = tmp_path / "team.db"
    result = merge(cli, a, team, "--run", "r2")
    assert "  runs: 1 created (r2)" in result.output
    assert "  generation cache: not merged (--run)" in result.output
    con = sqlite3.connect(team)
    assert con.execute("SELECT id FROM run").fetchall() == [("r2",)]
    assert con.execute("SELECT DISTINCT run_id FROM sample_result").fetchall() == [("r2",)]
    assert con.execute("SELECT COUNT(*) FROM generation_cache").fetchone() == (0,)
    con.close()
    missing = merge(cli, a, team, "--run", "r2", "--run", "nope", code=1)
    assert f"SRC sqlite:///{a} has no run nope (its runs: r1, r2)" in missing.output


def test_passwords_are_masked_in_every_message(world: World, cli, tmp_path: Path) -> None:
    a = tmp_path / "a.db"
    laptop(world, cli, a, "--run_id", "r1", "--num_samples", "2")
    cases = [
        (a, "postgresql+psycopg://alice:s3cret@127.0.0.1:1/team"),  # nobody listens on port 1
        ("postgresql+psycopg://alice:s3cret@127.0.0.1:1/team", tmp_path / "team.db"),
        (a, "postgresql+psycopg://alice:s3cret@127.0.0.1:notaport/team"),
    ]
    for src, dest in cases:
        result = merge(cli, src, dest, code=1)
        assert "s3cret" not in result.output
        assert "alice:***@127.0.0.1" in result.output
    assert not (tmp_path / "team.db").exists()


def test_the_merged_tables_are_an_explicit_list() -> None:
    assert list(MERGED_TABLES) == MERGED
