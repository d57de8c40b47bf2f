"""Real dataset formats, checked before any generation: COCO, Karpathy, a folder with JSONL/CSV.

Files are built the way users have them: non-contiguous COCO ids, a missing
image, a corrupt image, an image without references.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tracemalloc
from pathlib import Path

import ijson
import pytest
from PIL import Image

from cobra_eval.datasets import Sample, SampleReferences, json_stream, load_dataset, select_samples
from cobra_eval.errors import DatasetError
from tests.conftest import BACKEND, load_json


def png(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)


def run(cli, tmp_path: Path, dataset: Path | str, *extra: str):
    return cli("--backend", BACKEND, "--dataset", str(dataset), "--output_dir",
               str(tmp_path / "out"), "--metrics", "none", *extra)  # fmt: skip


def rows(tmp_path: Path, sql: str) -> list[tuple]:
    import sqlite3

    con = sqlite3.connect(tmp_path / "out" / "cobra_eval.db")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """A COCO captions file: ids 397133, 37777, 252219 (fine), 87038 (image missing),
    174482 (corrupt image), 403385 (no references), 6818 (fine)."""
    ids = [397133, 37777, 252219, 87038, 174482, 403385, 6818]
    images, annotations = [], []
    for k, image_id in enumerate(ids):
        name = f"COCO_val2014_{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": name})
        if image_id != 87038:
            png(tmp_path / "val2014" / name, (k * 40, 100, 200))
        if image_id != 403385:
            annotations += [
                {"id": image_id * 10 + j, "image_id": image_id, "caption": f"picture {k} no. {j}"}
                for j in range(3)
            ]
    (tmp_path / "val2014" / "COCO_val2014_000000174482.jpg").write_bytes(b"\xff\xd8 truncated")
    path = tmp_path / "annotations" / "captions_val2014.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def test_a_coco_file_is_checked_before_generation_and_refused_with_a_report(
    coco: Path, tmp_path: Path, cli
) -> None:
    result = run(cli, tmp_path, coco, "--images", str(tmp_path / "val2014"))
    assert result.exit_code == 1
    out = result.output
    assert "dataset check failed for" in out and "2 of the selected samples cannot be used" in out
    assert "missing image files: 1 (e.g. 87038: " in out
    assert "COCO_val2014_000000087038.jpg" in out
    assert "images without reference captions: 1 (e.g. 403385)" in out
    assert "Traceback" not in out
    assert not (tmp_path / "out" / "cobra_eval.db").exists()
    # a selection that stops before the problems is fine
    first = run(cli, tmp_path, coco, "--images", str(tmp_path / "val2014"), "--num_samples", "3")
    assert first.exit_code == 0, first.output


def test_skip_missing_plans_without_them_and_a_corrupt_image_is_a_failed_sample(
    coco: Path, tmp_path: Path, cli
) -> None:
    result = run(cli, tmp_path, coco, "--images", str(tmp_path / "val2014"), "--skip_missing")
    assert result.exit_code == 0, result.output
    assert (
        "Skipped with --skip_missing: 1 missing image files, 1 images without reference "
        "captions (recorded in the run)" in result.output
    )
    planned = [
        i for (i,) in rows(tmp_path, "SELECT image_id FROM planned_sample ORDER BY position")
    ]
    assert planned == [397133, 37777, 252219, 174482, 6818]  # the file's order, ids as given
    status = dict(rows(tmp_path, "SELECT image_id, status FROM sample_result"))
    assert status == {397133: "ok", 37777: "ok", 252219: "ok", 174482: "failed", 6818: "ok"}
    (error,) = rows(tmp_path, "SELECT error FROM sample_result WHERE image_id = 174482")[0]
    assert "COCO_val2014_000000174482.jpg" in error
    (settings,) = rows(tmp_path, "SELECT settings FROM run_method")[0]
    assert json.loads(settings)["skipped"] == {
        "missing image files": {"count": 1, "first": [87038]},
        "images without reference captions": {"count": 1, "first": [403385]},
    }


def test_a_reference_no_scorer_can_read_is_refused_or_skipped(tmp_path: Path, cli) -> None:
    # "\\ud83d" without its pair: json decodes it to a str that UTF-8 cannot encode
    for k in range(3):
        png(tmp_path / f"{k}.png", (k * 60, 1, 2))
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({
        "images": [{"id": k, "file_name": f"{k}.png"} for k in range(3)],
        "annotations": [{"image_id": 0, "caption": "a cat"},
                        {"image_id": 1, "caption": "a dog \ud83d on grass"},
                        {"image_id": 2, "caption": "a bird"}],
    }))  # fmt: skip
    assert "\\ud83d" in path.read_text()
    refused = run(cli, tmp_path, path, "--images", str(tmp_path))
    assert refused.exit_code == 1
    assert "images whose reference captions hold a lone UTF-16 surrogate: 1 (e.g. 1)" in (
        refused.output
    )
    assert "Traceback" not in refused.output
    assert not (tmp_path / "out" / "cobra_eval.db").exists()
    skipped = run(cli, tmp_path, path, "--images", str(tmp_path), "--skip_missing")
    assert skipped.exit_code == 0, skipped.output
    assert rows(tmp_path, "SELECT image_id FROM sample_result ORDER BY image_id") == [(0,), (2,)]


def test_duplicate_ids_and_unreadable_files_are_refused(tmp_path: Path, cli) -> None:
    png(tmp_path / "a.png", (1, 2, 3))
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({
        "images": [{"id": 5, "file_name": "a.png"}, {"id": 5, "file_name": "a.png"}],
        "annotations": [{"image_id": 5, "caption": "x"}],
    }))  # fmt: skip
    result = run(cli, tmp_path, dup)
    assert result.exit_code == 1 and "1 image ids appear more than once (e.g. 5)" in result.output
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    result = run(cli, tmp_path, broken)
    assert result.exit_code == 1 and "is not valid JSON (line 1 column" in result.output
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"images": [{"file_name": "a.png"}], "annotations": []}))
    result = run(cli, tmp_path, wrong)
    assert result.exit_code == 1 and "not in COCO captions format" in result.output
    result = run(cli, tmp_path, tmp_path / "absent.json")
    assert result.exit_code == 1 and "absent.json does not exist" in result.output


@pytest.fixture
def karpathy(tmp_path: Path) -> Path:
    entries = []
    for k, (split, cocoid) in enumerate([("train", 9), ("val", 391895), ("test", 522418),
                                         ("restval", 184613), ("test", 318219)]):  # fmt: skip
        folder = "train2014" if split in ("train", "restval") else "val2014"
        name = f"COCO_{folder}_{cocoid:012d}.jpg"
        png(tmp_path / "coco" / folder / name, (k * 50, 20, 30))
        entries.append({
            "filepath": folder, "filename": name, "cocoid": cocoid, "split": split,
            "imgid": k, "sentids": [k * 5 + j for j in range(5)],
            "sentences": [{"raw": f"A raw caption {j} of image {k}.", "tokens": [], "imgid": k,
                           "sentid": k * 5 + j} for j in range(5)],
        })  # fmt: skip
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path


def test_the_karpathy_split_file_defaults_to_test_and_keys_on_cocoid(
    karpathy: Path, tmp_path: Path, cli
) -> None:
    result = run(cli, tmp_path, karpathy, "--images", str(tmp_path / "coco"))
    assert result.exit_code == 0, result.output
    got = rows(tmp_path, "SELECT image_id, reference_captions FROM sample_result ORDER BY id")
    assert [i for i, _ in got] == [522418, 318219]
    assert json.loads(got[0][1])[0] == "A raw caption 0 of image 2."
    (config,) = rows(tmp_path, "SELECT config FROM run")[0]
    assert json.loads(config)["dataset"]["split"] == "test"
    val = run(cli, tmp_path, karpathy, "--images", str(tmp_path / "coco"), "--split", "val")
    assert val.exit_code == 0, val.output
    assert ("391895",) in [
        (str(i),) for (i,) in rows(tmp_path, "SELECT image_id FROM sample_result")
    ]
    bad = run(cli, tmp_path, karpathy, "--split", "dev")
    assert bad.exit_code == 1
    assert "has no images in split 'dev' (its splits: restval, test, train, val)" in bad.output


def test_a_folder_with_a_captions_jsonl_or_csv(tmp_path: Path, cli) -> None:
    data = tmp_path / "mine"
    png(data / "cat.png", (200, 10, 10))
    png(data / "dog.png", (10, 200, 10))
    png(data / "sub" / "bird.png", (10, 10, 200))
    lines = [
        {"file_name": "cat.png", "captions": ["a red cat", "a cat"]},
        {"file_name": "dog.png", "caption": "a green dog"},
        {"file_name": "sub/bird.png", "captions": ["a blue bird"]},
    ]
    (data / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = run(cli, tmp_path, data)
    assert result.exit_code == 0, result.output
    got = rows(tmp_path, "SELECT image_id, reference_captions FROM sample_result ORDER BY image_id")
    assert [(i, json.loads(r)) for i, r in got] == [
        (0, ["a red cat", "a cat"]), (1, ["a green dog"]), (2, ["a blue bird"])]  # fmt: skip
    table = tmp_path / "table"
    png(table / "x.png", (1, 1, 1))
    png(table / "y.png", (2, 2, 2))
    with (table / "caps.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["image_id", "file_name", "caption"], [70, "x.png", "first of x"],
                          [80, "y.png", "only y"], [70, "x.png", "second of x"]])  # fmt: skip
    dataset = load_dataset(str(table / "caps.csv"))
    assert [(s.image_id, s.image_path.name, s.references) for s in dataset.samples] == [
        (70, "x.png", ("first of x", "second of x")), (80, "y.png", ("only y",))]  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run(cli, tmp_path, empty)
    assert result.exit_code == 1 and "captions.jsonl or captions.csv" in result.output
    (table / "bad.csv").write_text("name,text\nx.png,hello\n")
    with pytest.raises(DatasetError, match="needs a header with file_name and caption"):
        load_dataset(str(table / "bad.csv"))


def test_a_folder_file_is_read_line_by_line_as_its_format_defines_lines(tmp_path: Path) -> None:
    # JSON strings may hold U+2028 and U+0085 unescaped: they do not end a JSONL line
    caption = "a cat\u2028on a mat\u0085at noon"
    lines = [{"file_name": "a.png", "captions": [caption]}, {"file_name": "b.png", "caption": "b"}]
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("\ufeff" + "\r\n".join(json.dumps(x, ensure_ascii=False) for x in lines),
                     encoding="utf-8")  # fmt: skip
    assert [s.references for s in load_dataset(str(jsonl)).samples] == [(caption,), ("b",)]
    table = tmp_path / "t" / "captions.csv"
    table.parent.mkdir()
    table.write_text('file_name,caption\r\nx.png,"two\nlines"\r\nx.png,more\r\n')
    assert load_dataset(str(table)).samples[0].references == ("two\nlines", "more")
    jsonl.write_bytes(b'{"file_name": "a.png", "caption": "ok"}\n{"file_name": "b.png", '
                      b'"caption": "caf\xe9"}\n')  # fmt: skip
    with pytest.raises(DatasetError, match="is not UTF-8 text"):
        load_dataset(str(jsonl))


def coco_expected(data: dict) -> list[tuple[int, str, tuple[str, ...]]]:
    """What a COCO captions file holds, read as json reads it: (id, file name, references)."""
    refs: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        refs.setdefault(int(ann["image_id"]), []).append(ann["caption"].strip())
    return [(int(i["id"]), i["file_name"], tuple(refs.get(int(i["id"]), [])))
            for i in data["images"]]  # fmt: skip


@pytest.mark.parametrize("extra", ["", "nan", "emoji", "no compiled ijson"])
def test_a_coco_file_streams_to_what_json_reads(
    tmp_path: Path, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # members in any order, extra ones, ids as digit strings, unicode raw and escaped; NaN,
    # an escaped emoji and ijson without its compiled backend parse the file whole instead:
    # the same samples
    if extra == "no compiled ijson":
        monkeypatch.setattr(json_stream, "STREAMING", False)
    data = {
        "annotations": [{"image_id": 7, "caption": " Ein Hund im Schnee "},
                        {"image_id": "12", "caption": "猫 on a \"mat\"", "score": 0.5},
                        {"image_id": 7, "caption": "café au lait\nsecond line"}],
        "info": {"year": 2017, "nested": {"list": [1, [2, {"x": None}]]}},
        "images": [{"id": 12, "file_name": "sub/12.jpg", "height": 480.0},
                   {"id": "7", "file_name": "7.jpg", "extra": [{"a": 1}]},
                   {"id": 3, "file_name": "3.jpg"}],
        "licenses": [],
        "categories": [{"id": 1, "name": "x"}],
    }  # fmt: skip
    if extra == "nan":
        data["info"]["score"] = float("nan")
    if extra == "emoji":
        data["annotations"].append({"image_id": 3, "caption": "a dog 🐶"})
    path = tmp_path / "captions.json"
    text = json.dumps(data, ensure_ascii=False)
    path.write_text(text.replace("猫", "\\u732b") if extra == "" else
                    json.dumps(data) if extra == "emoji" else text, encoding="utf-8")  # fmt: skip
    dataset = load_dataset(str(path))
    got = [(s.image_id, str(s.image_path.relative_to(tmp_path)), s.references)
           for s in dataset.samples]  # fmt: skip
    assert got == coco_expected(json.loads(path.read_text(encoding="utf-8")))
    assert dataset.identity == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_coco_file_is_never_held_parsed_whole(tmp_path: Path) -> None:
    # ijson's compiled backend is what streams (the pure-Python one parses whole instead)
    assert json_stream.STREAMING, f"ijson's backend here: {ijson.backend_name}"
    n = 20_000
    data = {
        "info": {},
        "images": [{"license": 3, "file_name": f"{i:012d}.jpg", "height": 480, "width": 640,
                    "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg",
                    "id": i} for i in range(n)],
        "annotations": [{"image_id": i, "id": 10 * i + k,
                         "caption": f"A man riding a horse number {k} on the beach."}
                        for i in range(n) for k in range(5)],
    }  # fmt: skip
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))
    expected = coco_expected(data)
    del data
    tracemalloc.start()
    try:
        dataset = load_dataset(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(s.image_id, s.file_name, s.references) for s in dataset.samples] == expected
    # json.loads of the whole file peaked at about 3,500 bytes a sample
    assert peak / n < 2_000, f"{peak / n:.0f} bytes per sample at the peak"


def test_a_samples_references_and_image_path_read_back_as_given(tmp_path: Path) -> None:
    cases = [
        ("a cat", "a small cat", ""),  # an empty reference among others stays
        ("one line",),
        ("",),
        (),
        ("a cat\x00in a hat", "a dog"),  # the separator the samples join with
        ("a cat\nsitting", " spaced ", "é ü 猫"),
    ]
    folder = tmp_path / "images"
    for k, refs in enumerate(cases):
        sample = Sample.of(k, folder, f"sub/{k}.png", list(refs))
        assert sample.references == refs
        assert sample.image_path == folder / "sub" / f"{k}.png"
        assert sample.has_references == bool(refs)
    samples = {k: Sample.of(k, folder, f"{k}.png", refs) for k, refs in enumerate(cases)}
    view = SampleReferences(samples)
    assert len(view) == 5 and list(view) == [0, 1, 2, 4, 5]
    assert 3 not in view and 99 not in view and 4 in view
    assert view[5] == cases[5] and dict(view) == {k: cases[k] for k in view}
    with pytest.raises(KeyError):
        view[3]


def test_a_loaded_datasets_samples_hold_little_memory(tmp_path: Path) -> None:
    # a run holds every planned sample: at 100,000 of them each byte per sample is 100 KB
    refs = ["a red circle above a blue square", "a blue square below a red circle",
            "two shapes on a white background", "a circle and a square",
            "a red shape over a blue one"]  # fmt: skip
    n = 20_000
    lines = (json.dumps({"file_name": f"{i:012d}.jpg", "captions": refs}) for i in range(n))
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    tracemalloc.start()
    try:
        dataset = load_dataset(str(tmp_path / "captions.jsonl"))
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(dataset.samples) == n and dataset.samples[7].references == tuple(refs)
    assert dataset.samples[7].image_path == tmp_path / "000000000007.jpg"
    # a Path and a tuple of five strings each held about 860 bytes a sample
    assert held / n < 500, f"{held / n:.0f} bytes per sample"
    # the file read a line at a time: its rows parsed at once peaked at 2,000 bytes a sample
    assert peak / n < 600, f"{peak / n:.0f} bytes per sample at the peak"


def test_a_seeded_subset_is_stable_and_extends_in_the_same_order(world, cli) -> None:
    dataset = load_dataset(str(world.dataset))
    first_n = [s.image_id for s in select_samples(dataset, 10).samples]
    seeded = [s.image_id for s in select_samples(dataset, 10, seed=7).samples]
    assert seeded != first_n and len(set(seeded)) == 10
    assert seeded == [s.image_id for s in select_samples(dataset, 10, seed=7).samples]
    assert [s.image_id for s in select_samples(dataset, 20, seed=7).samples][:10] == seeded
    assert seeded != [s.image_id for s in select_samples(dataset, 10, seed=8).samples]
    small = cli(*world.run_args("--num_samples", "5", "--sample_seed", "7", "--run_id", "s"))
    assert small.exit_code == 0, small.output
    more = cli(*world.run_args("--num_samples", "10", "--sample_seed", "7", "--run_id", "s"))
    assert more.exit_code == 0, more.output
    planned = [i for (i,) in world.rows("SELECT image_id FROM planned_sample ORDER BY position")]
    assert planned == seeded
    (config,) = world.rows("SELECT config FROM run")[0]
    assert json.loads(config)["dataset"]["selection"] == "seeded:7"
    # another seed is another selection: the run refuses to mix them
    other = cli(*world.run_args("--num_samples", "10", "--sample_seed", "8", "--run_id", "s"))
    assert other.exit_code == 1 and "dataset.selection" in other.output


def test_an_edited_annotation_file_is_another_dataset(world, cli) -> None:
    first = cli(*world.run_args("--num_samples", "3", "--run_id", "e"))
    assert first.exit_code == 0, first.output
    data = load_json(world.dataset)
    data["annotations"][0]["caption"] = "an edited caption"
    world.dataset.write_text(json.dumps(data))
    again = cli(*world.run_args("--num_samples", "3", "--run_id", "e"))
    assert again.exit_code == 1
    assert "dataset.identity" in again.output
