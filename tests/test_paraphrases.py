"""METEOR on its paraphrase table cut to a run's references scores as on the whole table."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from cobra_eval.metrics.meteor import MeteorProcess
from cobra_eval.metrics.paraphrases import PhraseIndex, cut_table, ensure_index

# METEOR's format: a number it ignores, a phrase, its paraphrase. The last entry has no
# line break at its end, one phrase has two spaces inside, one paraphrase is empty.
SMALL_TABLE = (
    b"0.5\na man\na person\n"
    b"0.1\nhorse\npony\n"
    b"0.2\nbig  dog\nlarge dog\n"
    b"0.3\ngrass\n\n"
    b"0.4\nzebra\nstriped horse\n"
    b"0.8\nwell known\nfamous\n"
    b"0.6\nthe sky\nthe heavens"
)
PAIRS = [
    ("a person rides a pony on the grass", ["a man riding a horse", "a big dog runs on grass"]),
    ("a large dog on the grass", ["a big dog on grass"]),
    ("a zebra in a field", ["a striped horse in a field"]),
    # METEOR's normalizer makes this reference "a well known horse"
    ("a famous horse", ["a well-known horse"]),
]


@pytest.fixture
def write_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[bytes], Path]:
    """Writes a gzip table of these bytes (with its index cache in the test's folder)."""
    monkeypatch.setenv("COBRA_EVAL_CACHE", str(tmp_path / "cache"))

    def write(content: bytes) -> Path:
        path = tmp_path / "paraphrases.gz"
        path.write_bytes(gzip.compress(content))
        return path

    return write


@pytest.fixture
def small_table(write_table: Callable[[bytes], Path]) -> Path:
    return write_table(SMALL_TABLE)


def entries(path: Path) -> list[tuple[str, str]]:
    lines = gzip.decompress(path.read_bytes()).decode().split("\n")
    return list(zip(lines[1::3], lines[2::3], strict=False))


def prepared(references: list[str], table: Path | None = None) -> MeteorProcess:
    meteor = MeteorProcess(table=table)
    meteor.prepare(lambda: references)
    return meteor


def test_the_cut_keeps_exactly_the_entries_a_reference_holds_a_phrase_of(
    small_table: Path, tmp_path: Path
) -> None:
    references = [ref for _, refs in PAIRS for ref in refs]
    kept = cut_table(references, tmp_path / "cut.gz", small_table)
    # "big dog" is in a reference, however the table spaced it; "zebra" is in none, but
    # its paraphrase is (a caption saying "zebra" matches it); "well known" is as METEOR
    # normalizes "well-known"; "the sky" and "the heavens" are in none
    assert entries(tmp_path / "cut.gz") == [
        ("a man", "a person"),
        ("horse", "pony"),
        ("big dog", "large dog"),
        ("grass", ""),
        ("zebra", "striped horse"),
        ("well known", "famous"),
    ]
    assert kept == 6


def test_references_cut_a_chunk_at_a_time_cut_the_same_table(
    small_table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cobra_eval.metrics import paraphrases

    references = [ref for _, refs in PAIRS for ref in refs]
    cut_table(references, tmp_path / "whole.gz", small_table)
    monkeypatch.setattr(paraphrases, "NORMALIZE_CHUNK", 2)
    assert cut_table(references, tmp_path / "chunked.gz", small_table) == 6
    assert entries(tmp_path / "chunked.gz") == entries(tmp_path / "whole.gz")
    # a reference with a line break in a later chunk still means the whole table
    assert cut_table([*references, "a\nhorse"], tmp_path / "broken.gz", small_table) is None


@pytest.mark.slow
def test_meteor_on_the_cut_table_gives_the_whole_tables_statistics(small_table: Path) -> None:
    references = [ref for _, refs in PAIRS for ref in refs]
    with MeteorProcess(table=small_table) as whole:
        expected = whole.stats_many(PAIRS)
    with prepared(references, small_table) as meteor:
        assert meteor.stats_many(PAIRS) == expected
    # the pairs do use the paraphrases: without them their statistics differ
    with prepared(["an unrelated reference"], small_table) as meteor:
        without = meteor.stats_many(PAIRS)
    assert all(a != b for a, b in zip(without, expected, strict=True))


@pytest.mark.slow
def test_words_beyond_ascii_keep_every_phrase_they_could_be(
    write_table: Callable[[bytes], Path], tmp_path: Path
) -> None:
    source = write_table(
        "0.1\ncafé\ncoffee shop\n0.2\nnaïve\nsimple\n0.3\nhorse\npony\n"
        "0.4\nthe sky\nthe heavens\n".encode()
    )
    # Java and Python may lower-case such words differently: every phrase with one
    # stays; "25\xa01/2" is one word to Java (it splits words at ASCII spaces only)
    references = ["un CAFÉ au lait", "a horse on 25\xa01/2 street"]
    assert cut_table(references, tmp_path / "cut.gz", source) == 3
    assert entries(tmp_path / "cut.gz") == [
        ("café", "coffee shop"),
        ("naïve", "simple"),
        ("horse", "pony"),
    ]
    pairs = [("a coffee shop", ["un CAFÉ au lait"]), ("a pony on 25\xa01/2 street", references[1:])]
    with MeteorProcess(table=source) as whole:
        expected = whole.stats_many(pairs)
    with prepared(references, source) as meteor:
        assert meteor.stats_many(pairs) == expected


def test_the_index_is_built_once_then_read_from_the_cache(small_table: Path) -> None:
    folder = ensure_index(small_table)
    built = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert ensure_index(small_table) == folder
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == built
    index = PhraseIndex.load(folder)
    assert len(index.left) == len(index.right) == 7
    # a table changed in place is indexed again
    small_table.write_bytes(gzip.compress(SMALL_TABLE + b"\n0.8\ndog\nhound\n"))
    again = ensure_index(small_table)
    assert again != folder and len(PhraseIndex.load(again).left) == 8


@pytest.mark.parametrize("bad", [b"0.1\nhorse\npony\r\n", b"0.1\nhorse\x0bx\npony\n", b"0.1\n"])
def test_tables_python_would_split_unlike_java_are_not_indexed(
    bad: bytes, write_table: Callable[[bytes], Path], tmp_path: Path
) -> None:
    source = write_table(bad)
    with pytest.raises(RuntimeError, match="IndexUnsupported"):
        ensure_index(source)
    assert list((tmp_path / "cache").rglob("*.npy")) == []


@pytest.mark.slow
def test_a_table_that_cannot_be_indexed_is_loaded_whole(
    write_table: Callable[[bytes], Path],
) -> None:
    # Java ends a line at \r: this entry is read as "horse" -> "pony" and then "a man" ...
    source = write_table(b"0.1\nhorse\rpony\n0.2\na man\na person\n")
    pairs = [("a pony and a person", ["a horse and a man"])]
    with MeteorProcess(table=source) as whole:
        expected = whole.stats_many(pairs)
    with prepared(["a horse and a man"], source) as meteor:
        assert meteor.stats_many(pairs) == expected


@pytest.mark.slow
def test_real_coco_captions_score_the_same_on_the_cut_and_the_whole_table() -> None:
    from cobra_eval.metrics.corpus import ptb_tokenize, real_coco_captions

    captions = real_coco_captions()
    ids = sorted(captions)[:300]
    tokenized = ptb_tokenize({i: captions[i] for i in ids})
    # each image's first caption against its others, as a run sends them
    pairs = [(tokenized[i][0], tokenized[i][1:]) for i in ids]
    references = [ref for _, refs in pairs for ref in refs]
    with MeteorProcess() as whole:
        expected = whole.stats_many(pairs)
    with prepared(references) as meteor:
        assert meteor.stats_many(pairs) == expected
    # with (almost) no paraphrases, many of these statistics differ: the paraphrases
    # matter here, and the cut above kept the ones they need
    with prepared(["zzz"]) as meteor:
        without = meteor.stats_many(pairs)
    assert sum(a != b for a, b in zip(without, expected, strict=True)) >= 30


def test_a_cut_left_by_a_killed_process_is_removed_by_the_next_one(
    small_table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    # a process that cut its table, then is killed before it can remove it
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from cobra_eval.metrics.meteor import MeteorProcess\n"
        "meteor = MeteorProcess(table=Path(sys.argv[1]))\n"
        "print(meteor.prepare(lambda: ['a man riding a horse']).result(), flush=True)\n"
        "time.sleep(600)\n"
    )
    env = {**os.environ, "TMPDIR": str(temp)}
    killed = subprocess.Popen(
        [sys.executable, "-c", script, str(small_table)], env=env, stdout=subprocess.PIPE, text=True
    )
    alive = subprocess.Popen(["sleep", "600"])
    try:
        assert killed.stdout is not None
        cut = Path(killed.stdout.readline().strip())
        assert cut.is_file() and cut.parent.parent == temp
        killed.kill()
        killed.wait()
        # a live process's cut (named as it would name it) is kept
        (temp / f"cobra-eval-meteor-{alive.pid}-abc").mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(temp))
        with prepared(["a man riding a horse"], small_table) as meteor:
            assert meteor.stats_many(PAIRS[:1])
            names = sorted(path.name for path in temp.iterdir())
            assert not cut.parent.exists()
            assert len(names) == 2 and f"cobra-eval-meteor-{alive.pid}-abc" in names
            assert any(name.startswith(f"cobra-eval-meteor-{os.getpid()}-") for name in names)
        # its own, once closed
        assert [path.name for path in temp.iterdir()] == [f"cobra-eval-meteor-{alive.pid}-abc"]
    finally:
        killed.kill()
        alive.kill()
        killed.wait()
        alive.wait()
