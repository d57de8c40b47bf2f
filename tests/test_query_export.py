"""`query` reads and never writes; `export` to JSON, CSV, JSON Lines and Parquet; the README's
ready queries run as printed, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from tests.conftest import REPO, World

pytestmark = pytest.mark.databases


@pytest.fixture
def run(world: World, cli) -> World:
    """A run of every method on 6 samples with BLEU and CIDEr-D."""
    result = cli(*world.run_args("--method", "all", "--num_samples", "6", "--run_id", "r",
                                 "--metrics", "bleu,cider"))  # fmt: skip
    assert result.exit_code == 0, result.output
    return world


def files_state(world: World) -> object:
    """What a write would change: the database's content, and for SQLite the file's bytes
    (a reader of a WAL database may create the empty -wal/-shm side files: SQLite's own)."""
    if world.url:
        return world.dump()
    return sorted((p.name, p.read_bytes()) for p in world.out.iterdir()
                  if p.is_file() and not p.name.endswith(("-wal", "-shm")))  # fmt: skip


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM sample_result",
        "UPDATE run SET status = 'x'",
        "DROP TABLE metric_value",
        "INSERT INTO run (id) VALUES ('evil')",
        "CREATE TABLE evil (x INTEGER)",
        "ATTACH DATABASE 'evil.db' AS evil",
        "SELECT 1; DELETE FROM sample_result",
        "COMMIT; DELETE FROM sample_result",
    ],
)
def test_query_refuses_every_write_and_changes_nothing(run: World, cli, sql: str) -> None:
    before = files_state(run)
    result = cli("query", sql, *run.db_option)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: query")
    assert "Traceback" not in result.output
    assert files_state(run) == before
    assert not (REPO / "evil.db").exists() and not Path("evil.db").exists()


def test_query_prints_a_table_csv_and_json(run: World, cli) -> None:
    sql = "SELECT method, COUNT(*) AS n FROM sample_result GROUP BY method ORDER BY method"
    table = cli("query", sql, *run.db_option)
    assert table.exit_code == 0, table.output
    assert table.output.splitlines()[0].split() == ["method", "n"]
    assert "scratchpad_compare  6" in table.output and "(4 rows)" in table.output
    as_csv = list(csv.reader(io.StringIO(cli("query", sql, *run.db_option, "--format",
                                             "csv").output)))  # fmt: skip
    assert as_csv[0] == ["method", "n"] and len(as_csv) == 5
    as_json = json.loads(cli("query", sql, *run.db_option, "--format", "json").output)
    assert {"method": "baseline", "n": 6} in as_json
    bad = cli("query", "SELECT nope FROM nowhere", *run.db_option)
    assert bad.exit_code == 1 and "Error: query" in bad.output


def readme_queries() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Analysis") : text.index("**Exports.**")]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


def test_the_readmes_ready_queries_run_as_printed(run: World, cli) -> None:
    queries = readme_queries()
    assert len(queries) == 5
    outputs = []
    for sql in queries:
        result = cli("query", sql, *run.db_option, "--format", "json")
        assert result.exit_code == 0, (sql, result.output)
        outputs.append(json.loads(result.output))
    means, worst, _beats, parse, progress = outputs
    assert {row["method"] for row in means} == {
        "baseline", "scratchpad", "llava_cot", "scratchpad_compare"}  # fmt: skip
    assert len(worst) == 6 and worst == sorted(worst, key=lambda r: r["cider"])
    assert {(r["method"], r["pass"]) for r in parse} >= {("scratchpad_compare", "refine")}
    assert all(r["done"] == 6 and r["total_planned"] == 6 for r in progress)


def test_export_formats_one_row_per_sample_with_metric_columns(
    run: World, cli, tmp_path: Path
) -> None:
    lines = cli("export", "r", "--format", "jsonl", *run.db_option).output.splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 24 and {r["method"] for r in rows} == {
        "baseline", "scratchpad", "llava_cot", "scratchpad_compare"}  # fmt: skip
    assert all({"Bleu_4", "CIDEr", "generated_caption", "reference_captions"} <= r.keys()
               for r in rows)  # fmt: skip
    one = cli("export", "r", "--method", "scratchpad", "--format", "csv", *run.db_option)
    table = list(csv.DictReader(io.StringIO(one.output)))
    assert len(table) == 6 and {r["method"] for r in table} == {"scratchpad"}
    assert json.loads(table[0]["reference_captions"])  # lists travel as JSON text in CSV
    by_id = {r["image_id"]: r for r in rows if r["method"] == "scratchpad"}
    for r in table:
        assert float(r["CIDEr"]) == pytest.approx(by_id[int(r["image_id"])]["CIDEr"])
    parquet = tmp_path / "r.parquet"
    done = cli("export", "r", "--format", "parquet", "--output", str(parquet), *run.db_option)
    assert done.exit_code == 0, done.output
    import pandas as pd

    frame = pd.read_parquet(parquet)
    assert len(frame) == 24 and list(frame["reference_captions"].iloc[0]) == rows[0][
        "reference_captions"]  # fmt: skip
    assert frame["CIDEr"].tolist() == pytest.approx([r["CIDEr"] for r in rows])
    needs = cli("export", "r", "--format", "parquet", *run.db_option)
    assert needs.exit_code == 1 and "give --output FILE" in needs.output
