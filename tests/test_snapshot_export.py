"""Checkpoint export as a user sees it: the streamed file, its schedule, retention, links.

The streamed export must write exactly the bytes of the pydantic serialisation
(``dumps(build_document(...))``) on varied data and on both databases; the
schedule thins out after 16 intervals; old numbered snapshots are deleted
beyond --keep_checkpoints; ``latest`` is a hard link (a copy where links fail).
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import tracemalloc
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import insert, update

from cobra_eval import __version__
from cobra_eval.config import SETTINGS_KEY
from cobra_eval.errors import StoreError
from cobra_eval.store import Store, checkpoint_io, resolve_url, snapshot_stream
from cobra_eval.store.checkpoint_io import (
    CheckpointFile,
    CheckpointInfo,
    CheckpointMeta,
    CorpusMetrics,
    ResultRecord,
    dump_json,
    dumps,
    loads_exact,
    read_checkpoint,
)
from cobra_eval.store.checkpoint_schedule import (
    checkpoint_step,
    is_scheduled,
    prune_snapshots,
    scheduled_count,
)
from cobra_eval.store.engine import json_text
from cobra_eval.store.models import utcnow
from cobra_eval.store.repository import PLAN, RESULT
from cobra_eval.store.result_writer import write_result
from cobra_eval.store.scores import (
    ScoreUpdate,
    latest_corpus_metrics,
    record_corpus_metrics,
    update_scores,
)
from cobra_eval.store.snapshot_stream import CHUNK_ROWS, encode_results, open_snapshot
from cobra_eval.store.snapshots import catch_up_checkpoint, export_snapshot, import_document
from tests.conftest import World

WHEN = datetime(2025, 11, 30, 12, 0, 0)
CONFIG = {"model": {"name": "m"}, "generation": {"max_new_tokens": 8}, "dataset": {"id": "d"}}
HUGE = {"big": 2**70, "negative": -(2**64) - 1, "edges": [2**64 - 1, -(2**63), 2**63]}


def open_store(world: World) -> Store:
    return Store.open(resolve_url(world.url or str(world.db)))


def full_config(store: Store, run_id: str, method: str) -> dict[str, Any]:
    """The config recorded in exports: run part, method part and settings."""
    run = store.get_run(run_id)
    progress = store.method_progress(run_id, method)
    if run is None or not progress:
        raise StoreError(f"run {run_id!r} has no method {method!r} in {store.display}")
    return {**run.config, "method": progress[0].config, SETTINGS_KEY: progress[0].settings}


def build_document(
    store: Store, run_id: str, method: str, *, is_checkpoint: bool, when: datetime
) -> CheckpointFile:
    """The whole run/method as one pydantic document: the reference the stream must equal."""
    progress = store.method_progress(run_id, method)
    if not progress:
        raise StoreError(f"run {run_id!r} has no method {method!r} in {store.display}")
    total = progress[0].total_planned
    results = list(store.results(run_id, method))
    in_plan = store.count_results(run_id, method, limit=total)
    corpus = latest_corpus_metrics(store, run_id, method)
    ok = sum(r.status == "ok" for r in results)
    return CheckpointFile(
        meta=CheckpointMeta(
            timestamp=when.isoformat(timespec="seconds"),
            config=full_config(store, run_id, method),
            method=method,
            samples_processed=len(results),
            total_samples=total,
            is_checkpoint=is_checkpoint,
            run_id=run_id,
            tool_version=__version__,
        ),
        checkpoint_info=CheckpointInfo(
            processed_count=len(results), remaining_count=max(total - in_plan, 0)
        ),
        # only scores of exactly these results: older ones would describe another set
        corpus_metrics=CorpusMetrics(
            n_samples=corpus.n_samples, scope=corpus.scope, scores=corpus.scores
        )
        if corpus is not None and corpus.n_samples == ok
        else None,
        results=results,
    )


def reference_bytes(store: Store, method: str, *, is_checkpoint: bool = True) -> bytes:
    """What the pydantic path writes: the byte-for-byte contract of the streamed export."""
    return dumps(build_document(store, "r", method, is_checkpoint=is_checkpoint, when=WHEN))


def new_run(store: Store, plan: list[int], *, total: int, method: str = "baseline") -> None:
    if store.get_run("r") is None:
        store.create_run("r", CONFIG, "f")
    store.ensure_plan("r", plan)
    store.ensure_method("r", method, config={"name": method}, fingerprint="m",
                        settings={"checkpoint_interval": 10}, total=total)  # fmt: skip


def varied(nan: bool) -> list[ResultRecord]:
    """Results a real run can hold: unicode, nested metadata, None metrics, failures."""
    rng = random.Random(7)
    floats = [rng.uniform(-1e6, 1e6) for _ in range(20)] + [rng.random() for _ in range(20)]
    floats += [5e-324, 1.7976931348623157e308, 0.1, 1 / 3, -0.0, 1e-7, 1e16, 123456789.0]
    passes = [{"name": "scratchpad", "prompt": "Describe {image}", "raw_output": "Objects: x\n"
               "Caption: y", "caption": "y", "reasoning": "Objects: x", "parse_status": "ok",
               "metrics": {"CIDEr": 0.5, "Bleu_4": None}}]  # fmt: skip
    results = [
        ResultRecord(
            image_id=7,
            reference_captions=[
                "a café ☕",
                "日本語のキャプション",
                'quotes " and \\ back\u2028slash',
            ],
            generated_caption="line one\nline two\ttab \x01 and 🐈",
            reasoning_trace="think: 🧠\n- step\r\n",
            metadata={
                "parse_status": "ok",
                "passes": passes,
                "floats": floats,
                "nested": {"deep": [1, [2, {"x": None}], {"y": 1.5e-7}]},
                "empty": {},
                "list": [],
                "true": True,
                "key\nwith newline": "v",
            },
            metrics={"CIDEr": 0.1234567890123, "Bleu_4": None, "METEOR": 1e-7},
        ),
        ResultRecord(
            image_id=3,
            reference_captions=["a dog"],
            generated_caption="",
            metadata={"status": "failed", "error": "CUDA out of memory", "parse_status": "failed"},
        ),
        ResultRecord(image_id=11, reference_captions=["x"], generated_caption="x", metadata=HUGE),
        # built without validation, as the run loop may: pydantic's export made the int a float
        ResultRecord.model_construct(
            image_id=5,
            reference_captions=["y"],
            generated_caption="y",
            reasoning_trace="",
            metadata={},
            metrics={"CIDEr": 1, "Bleu_1": 0.5},
        ),
    ]
    if nan:  # PostgreSQL's JSON type refuses NaN; SQLite stores what json.dumps wrote
        results.append(
            ResultRecord(
                image_id=9,
                reference_captions=["z"],
                generated_caption="z",
                metadata={"inf": math.inf, "nan": math.nan},
            )
        )
    return results


def store_varied(store: Store, *, nan: bool) -> int:
    """A run whose plan order differs from commit order, with results outside the plan."""
    new_run(store, [11, 7, 3, 5, 9, 100], total=5)
    for result in varied(nan):
        assert store.commit_result("r", "baseline", result, worker="w:1", latency_s=0.1)
    with store.engine.begin() as conn:  # results of samples not in the plan: last, by id
        for image_id in (42, 41):
            unplanned = ResultRecord(
                image_id=image_id,
                reference_captions=["u"],
                generated_caption=f"unplanned {image_id}",
            )
            write_result(conn, "r", "baseline", unplanned, worker="w:2", latency_s=None)
        if nan:  # a NaN metric (committing one fails: metric_value.value is NOT NULL)
            conn.execute(
                RESULT.update().where(RESULT.c.image_id == 9).values(metrics={"CIDEr": math.nan})
            )
    return sum(r.status == "ok" for r in varied(nan)) + 2


@pytest.mark.databases
@pytest.mark.parametrize("corpus", ["none", "matching", "stale"])
def test_streamed_export_is_byte_identical_to_the_pydantic_document(
    world: World, tmp_path: Path, corpus: str
) -> None:
    with open_store(world) as store:
        ok = store_varied(store, nan=world.kind == "sqlite")
        if corpus != "none":
            n = ok if corpus == "matching" else ok - 1
            record_corpus_metrics(store, "r", "baseline", {"CIDEr": 0.7, "BLEU_4": 0.25},
                                  n=n, scope="checkpoint")  # fmt: skip
        for is_checkpoint in (True, False):
            exported = export_snapshot(
                store, tmp_path, "r", "baseline", is_checkpoint=is_checkpoint, when=WHEN
            )
            data = exported.path.read_bytes()
            assert data == reference_bytes(store, "baseline", is_checkpoint=is_checkpoint)
    doc = json.loads(data)
    assert ("corpus_metrics" in doc) == (corpus == "matching")
    assert [r["image_id"] for r in doc["results"]][:4] == [11, 7, 3, 5]  # plan order
    assert [r["image_id"] for r in doc["results"]][-2:] == [42, 41]  # then by id
    nan = world.kind == "sqlite"  # sample 9 has a result there
    assert doc["checkpoint_info"]["remaining_count"] == (0 if nan else 1)
    by_id = {r["image_id"]: r for r in doc["results"]}
    assert by_id[11]["metadata"] == HUGE  # exact, not floats
    assert by_id[5]["metrics"] == {"CIDEr": 1.0, "Bleu_1": 0.5}
    assert by_id[7]["generated_caption"] == "line one\nline two\ttab \x01 and 🐈"
    assert by_id[7]["metadata"]["floats"] == varied(False)[0].metadata["floats"]


@pytest.mark.databases
def test_an_empty_method_exports_an_empty_results_array(world: World, tmp_path: Path) -> None:
    with open_store(world) as store:
        new_run(store, [1, 2], total=2)
        exported = export_snapshot(store, tmp_path, "r", "baseline", is_checkpoint=True, when=WHEN)
        assert exported.path.read_bytes() == reference_bytes(store, "baseline")
    assert b'"results": []\n}\n' in exported.path.read_bytes()
    assert exported.count == 0


@pytest.mark.databases
def test_import_then_export_is_byte_identical(world: World, tmp_path: Path) -> None:
    with open_store(world) as store:
        new_run(store, [11, 7, 3, 5, 9], total=6)
        for result in varied(nan=world.kind == "sqlite"):
            assert store.commit_result("r", "baseline", result, worker="w:1", latency_s=0.1)
        ok = sum(r.status == "ok" for r in varied(nan=world.kind == "sqlite"))
        record_corpus_metrics(store, "r", "baseline", {"CIDEr": 0.7}, n=ok, scope="final")
        first = export_snapshot(store, tmp_path / "a", "r", "baseline", is_checkpoint=True,
                                when=WHEN)  # fmt: skip
    with Store.open(resolve_url(str(tmp_path / "other.db"))) as other:
        summary = import_document(other, read_checkpoint(first.path))
        assert (summary.run_id, summary.imported, summary.skipped) == ("r", ok + 1, 0)
        # again: every successful result is kept, the failed one replaced by the same
        again = import_document(other, read_checkpoint(first.path))
        assert (again.imported, again.skipped) == (1, ok)
        second = export_snapshot(other, tmp_path / "b", "r", "baseline", is_checkpoint=True,
                                 when=WHEN)  # fmt: skip
    assert second.path.read_bytes() == first.path.read_bytes()
    assert second.sha256 == first.sha256


def stored_rows(store: Store, run_id: str) -> list[Any]:
    """A run's result, pass and metric rows, without ids, times, worker or latency."""
    from sqlalchemy import select

    from cobra_eval.store.repository import METRIC, PASS

    keep = [c for c in RESULT.c if c.name not in ("id", "run_id", "worker", "latency_s",
                                                  "created_at")]  # fmt: skip
    with store.engine.connect() as conn:
        results = conn.execute(
            select(*keep).where(RESULT.c.run_id == run_id).order_by(RESULT.c.image_id)
        ).all()
        passes = conn.execute(
            select(RESULT.c.image_id, *[c for c in PASS.c if c.name not in ("id", "result_id")])
            .join(RESULT, PASS.c.result_id == RESULT.c.id)
            .where(RESULT.c.run_id == run_id)
            .order_by(RESULT.c.image_id, PASS.c.pass_index)
        ).all()
        metrics = conn.execute(
            select(RESULT.c.image_id, PASS.c.pass_index, METRIC.c.name, METRIC.c.value)
            .join(RESULT, METRIC.c.result_id == RESULT.c.id)
            .outerjoin(PASS, METRIC.c.pass_id == PASS.c.id)
            .where(RESULT.c.run_id == run_id)
            .order_by(METRIC.c.id)
        ).all()
    return [list(results), list(passes), list(metrics)]


@pytest.mark.databases
def test_an_import_stores_the_rows_a_run_commits(world: World, tmp_path: Path) -> None:
    """An import stores exactly the rows a run's commits store, row for row."""
    with open_store(world) as store:  # (NaN would come back as null: JSON has no NaN)
        new_run(store, [11, 7, 3, 5, 9], total=5)
        for result in varied(nan=False):
            assert store.commit_result("r", "baseline", result, worker="w:1", latency_s=None)
        exported = export_snapshot(store, tmp_path, "r", "baseline", is_checkpoint=True)
        summary = import_document(store, read_checkpoint(exported.path), run_id="copy")
        assert summary.imported == len(varied(nan=False))
        assert stored_rows(store, "copy") == stored_rows(store, "r")


@pytest.mark.databases
def test_results_of_one_plan_position_come_by_id_across_read_blocks(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plan positions that repeat (a hand-edited plan) order their results by result id."""
    monkeypatch.setattr(snapshot_stream, "CHUNK_ROWS", 4)
    positions = [0, 1, 1, 1, 1, 1, 2, 3, 3, 4, 4, 4, 5]
    with open_store(world) as store:
        new_run(store, list(range(len(positions))), total=len(positions))
        with store.engine.begin() as conn:
            for image_id, position in enumerate(positions):
                conn.execute(
                    update(PLAN).where(PLAN.c.image_id == image_id).values(position=position)
                )
        # committed last to first: within a position, result ids run against the plan's rows
        commit_ids(store, list(reversed(range(len(positions)))))
        exported = export_snapshot(store, tmp_path, "r", "baseline", is_checkpoint=True, when=WHEN)
        assert exported.path.read_bytes() == reference_bytes(store, "baseline")
    order = [r["image_id"] for r in json.loads(exported.path.read_bytes())["results"]]
    assert order == [0, 5, 4, 3, 2, 1, 6, 8, 7, 11, 10, 9, 12]


def bulk_results(store: Store, ids: range, *, method: str = "baseline") -> None:
    record = ResultRecord(
        image_id=0, reference_captions=["a red circle left of a blue square"] * 5,
        generated_caption="a red circle", metadata={"parse_status": "ok", "passes": [
            {"name": "caption", "prompt": "Describe the image.", "raw_output": "a red circle",
             "metrics": {"CIDEr": 0.9}}]}, metrics={"CIDEr": 0.9, "Bleu_4": 0.2},
    )  # fmt: skip
    now = utcnow()
    rows = [{"run_id": "r", "method": method, "image_id": i, "status": "ok",
             "reference_captions": record.reference_captions,
             "generated_caption": f"{record.generated_caption} {i}", "reasoning_trace": "",
             "metadata": record.metadata, "metrics": record.metrics, "worker": "w:1",
             "created_at": now} for i in ids]  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(insert(RESULT), rows)


@pytest.mark.databases
def test_a_snapshot_ignores_results_committed_while_it_is_written(world: World) -> None:
    n = CHUNK_ROWS * 2 + 200
    with open_store(world) as store:
        new_run(store, list(range(n + 1)), total=n + 1)
        bulk_results(store, range(n))
        with open_snapshot(store, "r", "baseline", is_checkpoint=True, when=WHEN) as snapshot:
            chunks = snapshot.chunks()
            parts = [next(chunks), next(chunks)]  # the head and the first results
            # another worker commits a sample meanwhile
            late = ResultRecord(image_id=n, reference_captions=[], generated_caption="late")
            store.commit_result("r", "baseline", late, worker="w:2", latency_s=None)
            parts += list(chunks)
        assert store.count_results("r", "baseline") == n + 1
    doc = json.loads(b"".join(parts))
    assert doc["checkpoint_info"] == {"processed_count": n, "remaining_count": 1}
    assert doc["meta"]["samples_processed"] == len(doc["results"]) == n
    assert [r["image_id"] for r in doc["results"]] == list(range(n))


def commit_ids(store: Store, ids: list[int], *, status: str = "ok") -> None:
    for i in ids:
        failed = {"status": "failed", "error": "out of memory"} if status == "failed" else {}
        result = ResultRecord(
            image_id=i, reference_captions=[f"ref {i} ☕"], generated_caption=f"caption {i}\n🐈",
            metadata={"parse_status": "ok", **failed}, metrics={"CIDEr": i / 7, "Bleu_4": None},
        )  # fmt: skip
        assert store.commit_result("r", "baseline", result, worker="w:1", latency_s=0.1)


@pytest.mark.databases
def test_a_checkpoint_copies_the_results_of_the_one_before_only_while_they_hold(
    world: World, tmp_path: Path
) -> None:
    """Each file equals a fresh export's bytes; earlier results are copied only when unchanged."""
    with open_store(world) as store:
        new_run(store, list(range(1, 41)), total=40)
        earlier = None

        def export(reused: int) -> None:
            nonlocal earlier
            exported = export_snapshot(
                store, tmp_path, "r", "baseline", is_checkpoint=True, when=WHEN, earlier=earlier
            )
            assert exported.path.read_bytes() == reference_bytes(store, "baseline")
            assert exported.reused == reused
            earlier = exported.items

        commit_ids(store, list(range(1, 11)))
        export(reused=0)
        commit_ids(store, list(range(11, 21)))
        export(reused=10)  # appended: the first 10 are copied
        export(reused=20)  # nothing new (the same file name: copied from the replaced file)
        commit_ids(store, [21, 22])
        commit_ids(store, [23], status="failed")
        # scores of the 22 successful results belong in the file: the failed one is counted
        record_corpus_metrics(store, "r", "baseline", {"CIDEr": 0.5}, n=22, scope="checkpoint")
        export(reused=20)
        assert earlier is not None
        assert json.loads(earlier.path.read_bytes())["corpus_metrics"]["n_samples"] == 22
        commit_ids(store, [23])  # the failed result is replaced: nothing is copied
        export(reused=0)
        commit_ids(store, [24])
        export(reused=23)
        update_scores(store, "r", "baseline", {3: ScoreUpdate(metrics={"CIDEr": 0.25})})
        export(reused=0)  # rescored in place
        commit_ids(store, [30])
        export(reused=24)
        commit_ids(store, [26])  # committed after 30 but planned before it (another worker)
        export(reused=0)
        commit_ids(store, [31])
        assert earlier is not None
        with earlier.path.open("r+b") as handle:  # the file changed since it was written
            handle.seek(earlier.start + 3)
            handle.write(b"X")
        export(reused=0)
        commit_ids(store, [32])
        export(reused=27)
        new_run(store, list(range(1, 41)), total=30)  # a later invocation plans fewer samples
        commit_ids(store, [33])
        export(reused=28)
        assert json.loads(earlier.path.read_bytes())["checkpoint_info"] == {
            "processed_count": 29,
            "remaining_count": 4,  # 26 of the first 30 are done
        }
        store.ensure_plan("r", [2, 1, *range(3, 41)])  # two samples change places in the plan
        export(reused=0)
        with store.engine.begin() as conn:  # a result outside the plan: placed after the rest
            unplanned = ResultRecord(image_id=999, reference_captions=[], generated_caption="u")
            write_result(conn, "r", "baseline", unplanned, worker="w:2", latency_s=None)
        export(reused=0)
        assert earlier is None  # such a file is not copied from


def test_streaming_export_memory_is_bounded(tmp_path: Path) -> None:
    n = 20_000
    with Store.open(resolve_url(str(tmp_path / "big.db"))) as store:
        new_run(store, list(range(n)), total=n)
        bulk_results(store, range(n))
        store.method_progress("r", "baseline")  # warm: connections, compiled statements
        tracemalloc.start()
        try:
            exported = export_snapshot(store, tmp_path, "r", "baseline", is_checkpoint=True)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert exported.count == n
    # the whole document would be the file's size as bytes, and several times it as objects
    assert exported.size > 12 * 2**20
    assert peak < exported.size / 5, (peak, exported.size)


def test_loads_exact_reads_what_orjson_would_change_with_the_stdlib() -> None:
    text = '{"a": 18446744073709551616, "b": -9223372036854775809, "c": 9223372036854775807}'
    assert loads_exact(text) == {"a": 2**64, "b": -(2**63) - 1, "c": 2**63 - 1}
    assert isinstance(orjson.loads(text)["a"], float)  # why the fallback exists
    assert loads_exact(text.encode()) == json.loads(text)
    assert math.isnan(loads_exact('{"x": NaN}')["x"])
    assert loads_exact('["\\ud800"]') == ["\ud800"]  # a lone surrogate orjson refuses
    assert loads_exact('{"caption": "12345678901234567890 digits in a string"}') == {
        "caption": "12345678901234567890 digits in a string"
    }
    with pytest.raises(json.JSONDecodeError, match="Expecting"):
        loads_exact('{"a": ')


def test_what_orjson_cannot_write_is_written_exactly_in_the_same_layout() -> None:
    value = {"big": [2**70, {"neg": -(2**64)}], "lone": "\ud800x", "ok": "é", "nan": math.nan}
    data = dump_json(value)
    assert json.loads(data) == {**value, "nan": None}
    plain = dump_json({"big": [1, {"neg": -1}], "lone": "x", "ok": "é", "nan": None})
    assert data.count(b"\n") == plain.count(b"\n")  # one value per line, as orjson writes
    odd_key = dump_json({"outer": {"\udc80": 2**70}})
    assert json.loads(odd_key) == {"outer": {"\udc80": 2**70}}


@pytest.mark.databases
def test_json_columns_hold_what_the_stdlib_would_write(world: World) -> None:
    odd = [{"nan": math.nan, "inf": -math.inf}, {"lone": "x\ud800"}, {"big": 2**70, 7: "int key"}]
    plain = {"f": [1.5e-05, 1e300, -0.0, 5e-324, 1 / 3], "t": "café \u2028 日本", "n": None}
    for value in [*odd, plain, {"nested": [plain, {"e": {}}]}]:
        # the same values as json.dumps writes (NaN stays NaN: orjson would write null)
        assert repr(json.loads(json_text(value))) == repr(json.loads(json.dumps(value)))
    # and through a database (a lone surrogate and NaN are refused by PostgreSQL's json)
    with open_store(world) as store:
        new_run(store, [1, 2, 3], total=3)
        values = [plain, {"big": 2**70, "m": {7: "int key"}}, {"nested": [plain]}]
        for image_id, value in enumerate(values, 1):
            record = ResultRecord(
                image_id=image_id, reference_captions=["a"], metadata=value, metrics={},
                generated_caption="a", reasoning_trace="",
            )  # fmt: skip
            store.commit_result("r", "baseline", record, worker="w", latency_s=None)
        stored = [r.metadata for r in store.results("r", "baseline")]
    assert repr(stored) == repr([json.loads(json.dumps(v)) for v in values])


def test_results_are_reindented_safely_whatever_their_strings_hold() -> None:
    records = [{"image_id": i, "caption": f"a\nb\r\n\u2028{i}\\n", "meta": {"k\n": [i, {}]}}
               for i in range(3)]  # fmt: skip
    body = encode_results(records)
    whole = dump_json({"results": records}, newline=True)
    assert whole == b'{\n  "results": [\n' + body + b"\n  ]\n}\n"


SCHEDULE_10 = [
    # processed, largest scheduled count <= processed (interval 10)
    (0, 0), (9, 0), (10, 10), (19, 10), (150, 150), (159, 150), (160, 160),
    (161, 160), (179, 160), (180, 180), (199, 180), (319, 300), (320, 320),
    (359, 320), (360, 360), (639, 600), (640, 640), (719, 640), (720, 720),
    (100_000, 92_160),
]  # fmt: skip


@pytest.mark.parametrize(("processed", "expected"), SCHEDULE_10)
def test_checkpoints_thin_out_after_16_intervals(processed: int, expected: int) -> None:
    assert scheduled_count(processed, 10) == expected
    assert scheduled_count(processed, 10, fixed=True) == processed // 10 * 10


def test_the_schedule_is_every_interval_then_about_8_per_doubling() -> None:
    for interval in (1, 3, 10, 50):
        counts = [c for c in range(1, 1000 * interval + 1) if is_scheduled(c, interval)]
        assert counts[:16] == [interval * k for k in range(1, 17)]
        for c in counts:  # the definition: a multiple of the step in effect at c
            step = interval * 2 ** max(0, math.floor(math.log2(c / (8 * interval))))
            assert c % step == 0 and checkpoint_step(c, interval) == step
        for low in (16, 32, 64, 128, 256):  # 8 per doubling
            assert len([c for c in counts if low * interval < c <= 2 * low * interval]) == 8
        # every export of a long run together: about 12 final-size exports, not N/2
        assert sum(counts) / counts[-1] < 13
        assert all(scheduled_count(p, interval) == max((c for c in counts if c <= p), default=0)
                   for p in range(0, 1000 * interval, max(1, interval // 3)))  # fmt: skip
    assert scheduled_count(500, 0) == 0 and scheduled_count(500, 0, fixed=True) == 0


def make_files(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(name)


def test_retention_deletes_only_this_methods_oldest_numbered_snapshots(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "baseline"
    numbered = [
        f"checkpoint_baseline_{c}_20251130_12{c % 60:02d}00.json" for c in range(10, 160, 10)
    ]
    others = ["checkpoint_baseline_latest.json", "results_baseline.json",
              "checkpoint_scratchpad_10_20251130_120000.json", "notes.txt",
              "checkpoint_baseline_5_20251130_120000.json.bak",
              "checkpoint_baseline_x.json"]  # fmt: skip
    make_files(folder, numbered + others)
    (folder / "checkpoint_baseline_1_20251130_120000.json").symlink_to(folder / "notes.txt")
    (folder / "checkpoint_baseline_2_20251130_120000.json").mkdir()
    # a second snapshot of one count (a catch-up after a kill): the newer stamp counts as newer
    make_files(folder, ["checkpoint_baseline_150_20251130_130000.json"])
    sibling = tmp_path / "run2" / "baseline"
    make_files(sibling, numbered)

    assert prune_snapshots(folder, "baseline", 0) == []
    removed = prune_snapshots(folder, "baseline", 10)
    assert sorted(p.name for p in removed) == sorted(numbered[:6])
    left = {p.name for p in folder.iterdir()}
    assert left == set(numbered[6:]) | set(others) | {
        "checkpoint_baseline_150_20251130_130000.json",
        "checkpoint_baseline_1_20251130_120000.json",
        "checkpoint_baseline_2_20251130_120000.json",
    }
    assert len(list(sibling.iterdir())) == len(numbered)  # another run: untouched
    removed = prune_snapshots(folder, "baseline", 1, current=folder / numbered[-1])
    assert {p.name for p in folder.iterdir()} & set(numbered) == {numbered[-1]}


@pytest.mark.databases
def test_export_keeps_the_newest_k_and_latest_is_a_hard_link(world: World, tmp_path: Path) -> None:
    with open_store(world) as store:
        new_run(store, list(range(60)), total=60)
        for k in range(1, 7):
            bulk_results(store, range((k - 1) * 10, k * 10))
            when = datetime(2025, 11, 30, 12, 0, k)
            export_snapshot(store, tmp_path, "r", "baseline", is_checkpoint=True, when=when, keep=3)
        final = export_snapshot(store, tmp_path, "r", "baseline", is_checkpoint=False, when=WHEN)
    folder = tmp_path / "r" / "baseline"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "checkpoint_baseline_40_20251130_120004.json",
        "checkpoint_baseline_50_20251130_120005.json",
        "checkpoint_baseline_60_20251130_120006.json",
        "checkpoint_baseline_latest.json",
        "results_baseline.json",
    ]
    latest, newest = folder / names[3], folder / names[2]
    assert latest.samefile(newest) and newest.stat().st_nlink == 2
    assert (folder / names[1]).stat().st_nlink == 1  # the previous one's link was replaced
    assert not latest.is_symlink()
    assert final.path.stat().st_nlink == 1
    assert json.loads(latest.read_bytes())["checkpoint_info"]["processed_count"] == 60


def test_latest_is_a_copy_where_hard_links_are_not_supported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*_: Any, **__: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with Store.open(resolve_url(str(tmp_path / "x.db"))) as store:
        new_run(store, list(range(5)), total=5)
        bulk_results(store, range(5))
        exported = export_snapshot(store, tmp_path, "r", "baseline", is_checkpoint=True)
    latest = exported.path.parent / "checkpoint_baseline_latest.json"
    assert latest.read_bytes() == exported.path.read_bytes()
    assert not latest.samefile(exported.path)
    umask = os.umask(0o022)
    os.umask(umask)
    assert latest.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in latest.parent.iterdir()) == sorted([exported.path.name,
                                                                       latest.name])  # fmt: skip


def test_a_failed_link_leaves_the_old_latest_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(resolve_url(str(tmp_path / "x.db"))) as store:
        new_run(store, list(range(10)), total=10)
        bulk_results(store, range(5))
        export_snapshot(store, tmp_path, "r", "baseline", is_checkpoint=True, when=WHEN)
        bulk_results(store, range(5, 10))
        real_replace, calls = os.replace, []

        def replace(src: Any, dst: Any) -> None:
            calls.append(Path(dst).name)
            if Path(dst).name.endswith("_latest.json"):
                raise OSError(errno.EIO, "Input/output error")
            real_replace(src, dst)

        monkeypatch.setattr(checkpoint_io.os, "replace", replace)
        with pytest.raises(StoreError, match=r"cannot write .*Input/output error; every sample"):
            export_snapshot(store, tmp_path, "r", "baseline", is_checkpoint=True)
        assert store.last_checkpoint_count("r", "baseline") == 5  # not recorded
    folder = tmp_path / "r" / "baseline"
    latest = json.loads((folder / "checkpoint_baseline_latest.json").read_bytes())
    assert latest["checkpoint_info"]["processed_count"] == 5
    assert not list(folder.glob(".*.tmp"))
    assert calls[-1] == "checkpoint_baseline_latest.json"


def test_catch_up_writes_the_checkpoint_the_schedule_says_was_missed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with Store.open(resolve_url(str(tmp_path / "x.db"))) as store:
        new_run(store, list(range(200)), total=200)
        bulk_results(store, range(175))
        assert catch_up_checkpoint(store, out, "r", "baseline", interval=0, processed=175) is None
        # the newest recorded checkpoint is 160's: thinned, 160 is the last due (then 180)
        store.record_checkpoint("r", "baseline", count=160, path="x", size=0, sha256="",
                                is_final=False)  # fmt: skip
        assert catch_up_checkpoint(store, out, "r", "baseline", interval=10,
                                   processed=175) is None  # fmt: skip
        # every 10: 170 was due and missed
        missed = catch_up_checkpoint(store, out, "r", "baseline", interval=10, processed=175,
                                     fixed=True, keep=1)  # fmt: skip
        assert missed is not None and missed.count == 175
        assert store.last_checkpoint_count("r", "baseline") == 175


def test_a_missing_method_is_one_clear_error(tmp_path: Path) -> None:
    with Store.open(resolve_url(str(tmp_path / "x.db"))) as store:
        new_run(store, [1], total=1)
        with pytest.raises(StoreError, match="run 'r' has no method 'llava_cot' in sqlite:///"):
            export_snapshot(store, tmp_path, "r", "llava_cot", is_checkpoint=True)
    assert not (tmp_path / "r").exists()


# -- the flags, end to end ---------------------------------------------------


def numbered_counts(world: World) -> list[int]:
    return sorted(int(p.name.split("_")[2]) for p in world.checkpoints() if "latest" not in p.name)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], [32, 36, 40]),
        (["--fixed_checkpoint_interval"], [36, 38, 40]),
        (["--keep_checkpoints", "0"], [*range(2, 33, 2), 36, 40]),
    ],
)
def test_run_thins_checkpoints_and_keeps_the_newest(
    world: World, cli: Any, extra: list[str], expected: list[int]
) -> None:
    keep = [] if "--keep_checkpoints" in extra else ["--keep_checkpoints", "3"]
    result = cli(*world.run_args("--num_samples", "40", "--checkpoint_interval", "2",
                                 *keep, *extra))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert numbered_counts(world) == expected


def test_run_defaults_link_latest_and_record_the_new_settings(world: World, cli: Any) -> None:
    result = cli(*world.run_args("--num_samples", "20", "--checkpoint_interval", "5"))
    assert result.exit_code == 0, result.output
    assert numbered_counts(world) == [5, 10, 15, 20]
    latest = next(p for p in world.checkpoints() if p.name.endswith("_latest.json"))
    newest = next(p for p in world.checkpoints() if p.name.startswith("checkpoint_baseline_20_"))
    assert latest.samefile(newest)
    settings = json.loads(latest.read_bytes())["meta"]["config"]["settings"]
    assert (settings["fixed_checkpoint_interval"], settings["keep_checkpoints"]) == (False, 10)


def test_keep_checkpoints_must_not_be_negative(world: World, cli: Any) -> None:
    result = cli(*world.run_args("--num_samples", "3", "--keep_checkpoints", "-1"))
    assert result.exit_code == 2
    assert "Invalid value for '--keep_checkpoints'" in result.output
    assert "-1 is not in the range x>=0" in result.output
    assert not world.db_exists()


def test_help_explains_the_schedule_and_retention(cli: Any) -> None:
    text = " ".join(cli("--help").output.split())
    assert "--fixed_checkpoint_interval" in text and "--keep-checkpoints K" in text
    assert "the interval doubles each time the count doubles" in text
    assert "the database already holds every sample" in text
    assert "results_*.json are never deleted" in text
