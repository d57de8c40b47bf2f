"""The bad-input catalogue: proof that nothing is lost when a user hands the tool something wrong.

Every case runs after a real run has stored results and written its checkpoint
files. It must end with one exact message, a non-zero exit (1 for our errors,
2 for Click's usage errors), no traceback, and the database and every file under
the test's folder exactly as they were. The exceptions are images that break
during generation (corrupt, decompression bomb): those are failed samples, stored
with their error, and the run completes.

SQLite only: the store-facing refusals (checkpoint files, configurations) run on
both databases in test_checkpoint_contract.py; the cases here are about inputs.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from PIL import Image

from cobra_eval import __version__
from cobra_eval.store.checkpoint_io import MAX_FILE_BYTES
from cobra_eval.store.engine import head_revision
from tests.conftest import BACKEND, REPO, World, load_json, subprocess_env
from tests.stand_in import make_coco_world

#: Files up to this size are compared by content; bigger ones (the sparse file) by size only.
COMPARED_BYTES = 64 * 1024**2
VICTIM = "img_001007.png"  # the second image of the stand-in dataset


def base_run(world: World, cli: Callable[..., Result]) -> None:
    """The state every case starts from: run 'base', 3 samples, checkpoints at 2 and final."""
    result = cli(*world.run_args("--num_samples", "3", "--checkpoint_interval", "2",
                                 "--run_id", "base"))  # fmt: skip
    assert result.exit_code == 0, result.output


def snapshot(world: World) -> tuple[list[Any], dict[str, Any]]:
    """The database's content and every file and folder under the test's folder."""
    dump = world.dump()  # first: closing its connection folds the WAL into the file
    files: dict[str, Any] = {}
    for path in sorted(world.root.rglob("*")):
        if path.name.endswith(("-wal", "-shm")):
            continue
        key = str(path.relative_to(world.root))
        if path.is_dir():
            files[key] = "folder"
        elif path.stat().st_size > COMPARED_BYTES:
            files[key] = ("size", path.stat().st_size)
        else:
            files[key] = path.read_bytes()
    return dump, files


def assert_lines(output: str, message: str) -> None:
    """message's lines appear in output as whole, consecutive lines."""
    lines, want = output.splitlines(), message.splitlines()
    windows = [lines[i : i + len(want)] for i in range(len(lines) - len(want) + 1)]
    assert want in windows, f"expected lines:\n{message}\n--- got:\n{output}"


def assert_refused(result: Result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    assert_lines(result.output, message)
    assert result.output.count("Error:") == 1
    assert "Traceback" not in result.output
    assert "Starting generation" not in result.output  # refused before generation


# --- files a user might hand over -----------------------------------------------------------


def hand_written(path: Path, ids: list[int], *, run_id: str | None = None) -> Path:
    """A small checkpoint in the guide's shape, as a person would write it (compact JSON)."""
    meta: dict[str, Any] = {
        "timestamp": "2025-11-30T12:00:00", "config": {"note": "by hand"}, "method": "baseline",
        "samples_processed": len(ids), "total_samples": 10, "is_checkpoint": True,
    }  # fmt: skip
    if run_id is not None:
        meta["run_id"] = run_id
    doc = {
        "meta": meta,
        "checkpoint_info": {"processed_count": len(ids), "remaining_count": 10 - len(ids)},
        "results": [
            {"image_id": i, "reference_captions": ["a cat"], "generated_caption": f"cat {i}",
             "reasoning_trace": "", "metadata": {}, "metrics": {}}
            for i in ids
        ],
    }  # fmt: skip
    path.write_text(json.dumps(doc))
    return path


def truncated(world: World) -> Path:
    path = hand_written(world.root / "cut.json", [1, 2])
    path.write_bytes(path.read_bytes()[:300])  # stops in the middle of a key
    return path


def wrong_shape(world: World) -> Path:
    path = world.root / "shape.json"
    path.write_text('{"meta": [], "checkpoint_info": 7, "results": {"1": "a cat"}}')
    return path


def duplicate_ids(world: World) -> Path:
    return hand_written(world.root / "dupes.json", [1, 2, 1])


def path_as_run_id(world: World) -> Path:
    return hand_written(world.root / "escape.json", [1], run_id="../../outside")


def huge(world: World) -> Path:
    path = world.root / "huge.json"
    path.touch()
    os.truncate(path, MAX_FILE_BYTES + 1)  # sparse: nothing is written, nothing must be read
    return path


def a_folder(world: World) -> Path:
    path = world.root / "checkpoint_baseline_latest.json"
    path.mkdir()
    return path


def final_file(world: World) -> Path:
    return world.out / "base" / "baseline" / "results_baseline.json"


def hide_victim(world: World) -> None:
    (world.root / "hidden").mkdir()
    shutil.move(world.dataset.parent / VICTIM, world.root / "hidden" / VICTIM)


def write(world: World, name: str, text: str) -> Path:
    path = world.root / name
    path.write_text(text)
    return path


def future_schema(world: World) -> None:
    con = sqlite3.connect(world.db)
    con.execute("UPDATE alembic_version SET version_num = 'zzzz_future'")
    con.commit()
    con.close()


def load(make: Callable[[World], Path]) -> Callable[[World], list[str]]:
    return lambda w: w.run_args("--num_samples", "5", "--load_results", str(make(w)))


def import_(make: Callable[[World], Path]) -> Callable[[World], list[str]]:
    return lambda w: ["import", str(make(w)), *w.db_option]


def load_final(*extra: str) -> Callable[[World], list[str]]:
    """--load_results with the base run's final results file, and other flags."""
    return lambda w: w.run_args("--num_samples", "5", "--load_results", str(final_file(w)), *extra)


def run_with(*extra: str) -> Callable[[World], list[str]]:
    return lambda w: w.run_args(*extra)


def then(
    prepare: Callable[[World], Any], args: Callable[[World], list[str]]
) -> Callable[[World], list[str]]:
    return lambda w: (prepare(w), args(w))[1]


TRUNCATED = (
    "Error: {root}/cut.json: not valid JSON at line 1 column 295: unterminated string "
    "(the file looks truncated)"
)
WRONG_SHAPE = (
    "Error: {root}/shape.json: wrong shape for a checkpoint or results file: meta: should be a "
    "JSON object; checkpoint_info: should be a JSON object; results: should be a JSON array"
)
DUPLICATES = (
    "Error: {root}/dupes.json: wrong shape for a checkpoint or results file: results: duplicate "
    "image_id in results: 1"
)
ESCAPE = (
    "Error: {root}/escape.json: wrong shape for a checkpoint or results file: meta.run_id: "
    "'../../outside' cannot name a folder (use letters, digits, '.', '_' and '-', starting "
    "with a letter or digit)"
)
HUGE = (
    f"Error: {{root}}/huge.json: {MAX_FILE_BYTES + 1} bytes is larger than the {MAX_FILE_BYTES} "
    "bytes a results file may have"
)
FOLDER = "Error: {root}/checkpoint_baseline_latest.json: is a directory, not a JSON results file"
COCO_INSTANCES = json.dumps({
    "images": [{"id": 1, "file_name": "a.png"}],
    "annotations": [{"id": 9, "image_id": 1, "bbox": [0, 0, 4, 4], "category_id": 3}],
})  # fmt: skip
NOT_AN_INTEGER = "Error: Invalid value for '--{0}' / '--{1}': '{2}' is not a valid integer range."
OUT_OF_RANGE = "Error: Invalid value for '--{0}' / '--{1}': {2} is not in the range x>={3}."

CASES = [
    pytest.param(load(truncated), 1, TRUNCATED, id="truncated-load"),
    pytest.param(import_(truncated), 1, TRUNCATED, id="truncated-import"),
    pytest.param(load(wrong_shape), 1, WRONG_SHAPE, id="wrong-shape-load"),
    pytest.param(import_(wrong_shape), 1, WRONG_SHAPE, id="wrong-shape-import"),
    pytest.param(load(duplicate_ids), 1, DUPLICATES, id="duplicate-ids-load"),
    pytest.param(import_(duplicate_ids), 1, DUPLICATES, id="duplicate-ids-import"),
    pytest.param(load(path_as_run_id), 1, ESCAPE, id="run-id-is-a-path-load"),
    pytest.param(import_(path_as_run_id), 1, ESCAPE, id="run-id-is-a-path-import"),
    pytest.param(load(huge), 1, HUGE, id="huge-load"),
    pytest.param(import_(huge), 1, HUGE, id="huge-import"),
    pytest.param(load(a_folder), 1, FOLDER, id="checkpoint-is-a-folder-load"),
    pytest.param(import_(a_folder), 1, FOLDER, id="checkpoint-is-a-folder-import"),
    pytest.param(
        load_final("--max_new_tokens", "64"),
        1,
        "Error: {out}/base/baseline/results_baseline.json was made with a different "
        "configuration:\n"
        "  generation.max_new_tokens: 128 (stored) != 64 (now)\n"
        "Run with the settings it was made with to continue it, or leave out --load_results "
        "to start a new run.",
        id="checkpoint-of-another-config",
    ),
    pytest.param(
        load_final("--method", "scratchpad"),
        1,
        "Error: {out}/base/baseline/results_baseline.json was made with a different "
        "configuration:\n"
        "  method: 'baseline' (stored) != 'scratchpad' (now)\n"
        "It holds results of method 'baseline'; run with --method baseline to continue it.",
        id="checkpoint-of-another-method",
    ),
    pytest.param(
        run_with("--method", "cot"),
        2,
        "Error: Invalid value for '--method': 'cot' is not one of 'baseline', 'scratchpad', "
        "'llava_cot', 'scratchpad_compare', 'all'.",
        id="unknown-method",
    ),
    pytest.param(
        run_with("--num_samples", "-3"),
        2,
        OUT_OF_RANGE.format("num_samples", "num-samples", -3, 1),
        id="negative-num-samples",
    ),
    pytest.param(
        run_with("--num_samples", "0"),
        2,
        OUT_OF_RANGE.format("num_samples", "num-samples", 0, 1),
        id="zero-num-samples",
    ),
    pytest.param(
        run_with("--num_samples", "2.5"),
        2,
        NOT_AN_INTEGER.format("num_samples", "num-samples", "2.5"),
        id="fractional-num-samples",
    ),
    pytest.param(
        run_with("--num_samples", "ten"),
        2,
        NOT_AN_INTEGER.format("num_samples", "num-samples", "ten"),
        id="word-num-samples",
    ),
    # (--checkpoint_interval 0 is the guide's way to switch the JSON files off: not a bad input)
    pytest.param(
        run_with("--checkpoint_interval", "-1"),
        2,
        OUT_OF_RANGE.format("checkpoint_interval", "checkpoint-interval", -1, 0),
        id="negative-checkpoint-interval",
    ),
    pytest.param(
        run_with("--checkpoint_interval", "2.5"),
        2,
        NOT_AN_INTEGER.format("checkpoint_interval", "checkpoint-interval", "2.5"),
        id="fractional-checkpoint-interval",
    ),
    pytest.param(
        run_with("--checkpoint_interval", "ten"),
        2,
        NOT_AN_INTEGER.format("checkpoint_interval", "checkpoint-interval", "ten"),
        id="word-checkpoint-interval",
    ),
    pytest.param(
        run_with("--num_samples", "41"),
        1,
        "Error: --num_samples 41 is larger than the dataset {data}/captions.json "
        "(40 usable samples)",
        id="more-samples-than-the-dataset",
    ),
    pytest.param(
        then(hide_victim, run_with("--num_samples", "4")),
        1,
        "Error: dataset check failed for {data}/captions.json: 1 of the selected samples "
        "cannot be used\n"
        f"  missing image files: 1 (e.g. 1007: {{data}}/{VICTIM})\n"
        "Fix them, or pass --skip_missing to plan without them (recorded in the run).",
        id="missing-image",
    ),
    pytest.param(
        lambda w: w.run_args("--dataset", str(write(w, "instances.json", COCO_INSTANCES))),
        1,
        "Error: dataset file {root}/instances.json is not in COCO captions format: an "
        "annotation lacks an integer 'image_id' or a 'caption': {{'id': 9, 'image_id': 1, "
        "'bbox': [0, 0, 4, 4], 'category_id': 3}}",
        id="annotations-not-captions",
    ),
    pytest.param(
        lambda w: w.run_args("--dataset", str(write(w, "list.json", '["a.png", "b.png"]'))),
        1,
        "Error: dataset file {root}/list.json is not in COCO captions format: expected a JSON "
        "object with 'images' and 'annotations'",
        id="annotations-not-coco",
    ),
    pytest.param(
        lambda w: w.run_args("--db", str(write(w, "notes.db", "my notes, not a database\n" * 40))),
        1,
        "Error: {root}/notes.db is not a SQLite database (file is not a database)",
        id="db-is-a-text-file",
    ),
    pytest.param(
        then(future_schema, run_with("--num_samples", "5")),
        1,
        "Error: database {out}/cobra_eval.db has schema revision zzzz_future, which is newer "
        "than this cobra_eval ({version}, schema head {head}) knows; upgrade cobra_eval to use "
        "it (the database was left untouched)",
        id="db-of-a-newer-schema",
    ),
    pytest.param(
        run_with("--backend", "hf", "--model", "/no/such/dir"),
        1,
        "Error: cannot load model '/no/such/dir': there is no directory /no/such/dir (and it is "
        "not a Hugging Face hub id either)",
        id="model-path-missing",
    ),
    pytest.param(
        run_with("--backend", "vllm"),
        1,
        "Error: unknown backend 'vllm' (available: cobra, hf, openai); a plugin is given as "
        "'module:attribute', e.g. --backend mypkg.backend:MyBackend",
        id="unknown-backend",
    ),
    pytest.param(
        run_with("--resume_from_checkpoint", "--fresh"),
        1,
        "Error: --fresh starts a new run; it cannot be combined with resuming or loading",
        id="resume-and-fresh",
    ),
    pytest.param(
        lambda w: w.run_args("--prompts", str(write(w, "prompts.json", "{baseline: 'Hi'}"))),
        1,
        "Error: --prompts {root}/prompts.json: not valid JSON (Expecting property name enclosed "
        "in double quotes: line 1 column 2 (char 1))",
        id="prompts-not-json",
    ),
    pytest.param(
        lambda w: w.run_args("--images", str(w.root / "val2014")),
        1,
        "Error: --images {root}/val2014 does not exist",
        id="images-folder-missing",
    ),
]


@pytest.mark.parametrize(("make", "code", "message"), CASES)
def test_a_bad_input_is_refused_with_one_message_and_changes_nothing(
    world: World, cli, make: Callable[[World], list[str]], code: int, message: str
) -> None:
    base_run(world, cli)
    args = make(world)
    before = snapshot(world)
    result = cli(*args)
    expected = message.format(
        root=world.root, out=world.out, data=world.dataset.parent, version=__version__,
        head=head_revision(),
    )  # fmt: skip
    assert_refused(result, code, expected)
    assert snapshot(world) == before


# --- images that break during generation: failed samples, the run completes -----------------


def test_a_corrupt_image_is_a_failed_sample_with_its_error(world: World, cli) -> None:
    victim = world.dataset.parent / VICTIM
    victim.write_bytes(b"GIF89a, or so it says")
    result = cli(*world.run_args("--num_samples", "4", "--run_id", "c"))
    assert result.exit_code == 0, result.output
    final = world.out / "c" / "baseline" / "results_baseline.json"
    assert_lines(
        result.output, f"Done: baseline 4/4 samples, 1 failed (retried on resume) -> {final}"
    )
    assert world.rows("SELECT status, error FROM sample_result WHERE image_id = 1007") == [
        ("failed", f"ImageError: {victim}: not an image file Pillow can read")
    ]
    assert world.rows("SELECT COUNT(*) FROM sample_result WHERE status = 'ok'") == [(3,)]


def decompression_bomb(path: Path, side: int = 20_000) -> Path:
    """A real PNG of side x side black 1-bit pixels: about 50 kB on disk, 400M pixels decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


#: Runs the CLI and reports the process's peak resident memory on stderr. VmHWM is this
#: process's own; ru_maxrss would also count the parent's memory at the fork.
PEAK_RSS = """
import runpy, sys
sys.argv = ["cobra_eval", *sys.argv[1:]]
try:
    runpy.run_module("cobra_eval", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    print("peak_rss_kib", peak, file=sys.stderr)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory in /proc")
def test_a_decompression_bomb_is_a_failed_sample_never_decoded(world: World) -> None:
    victim = decompression_bomb(world.dataset.parent / VICTIM)
    assert victim.stat().st_size < 100_000
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *world.run_args("--num_samples", "4", "--run_id", "b")],
        capture_output=True, text=True, timeout=120, env=subprocess_env(), cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    final = world.out / "b" / "baseline" / "results_baseline.json"
    assert_lines(
        done.stdout, f"Done: baseline 4/4 samples, 1 failed (retried on resume) -> {final}"
    )
    # Pillow's own limit (twice Image.MAX_IMAGE_PIXELS) refuses it on opening, before ours
    error = (
        f"ImageError: {victim}: refused as a decompression bomb (Image size (400000000 pixels) "
        f"exceeds limit of {2 * Image.MAX_IMAGE_PIXELS} pixels, could be decompression bomb DOS "
        "attack.)"
    )
    assert world.rows("SELECT status, error FROM sample_result WHERE image_id = 1007") == [
        ("failed", error)
    ]
    (failed,) = [r for r in load_json(final)["results"] if r["image_id"] == 1007]
    assert failed["metadata"]["error"] == error
    # decoding it would take 400 MB (1.2 GB as RGB): the header was enough to refuse it
    peak_kib = int(done.stderr.rsplit("peak_rss_kib", 1)[1])
    assert peak_kib < 300 * 1024, f"peak memory {peak_kib} KiB"


# --- an output folder that cannot be written --------------------------------------------------


def _cli_process(*args: str, as_user: str | None = None) -> tuple[int, str]:
    prefix = ["runuser", "-u", as_user, "--"] if as_user else []
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "cobra_eval", *args],
        capture_output=True, text=True, timeout=120, env=subprocess_env(), cwd=REPO,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


@contextmanager
def unwritable_folder(parent: Path) -> Iterator[tuple[Path, str | None, str]]:
    """A folder this test's CLI cannot write, the user to run the CLI as (None: as is), and
    the reason the system gives for a refused write.

    Root writes through any mode bits, so for root the folder is a tmpfs mounted
    read-only; where mounting is not permitted, the CLI runs as user nobody.
    """
    folder = parent / "readonly"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder, None, "Permission denied"
        finally:
            folder.chmod(0o755)
        return
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                           capture_output=True, text=True)  # fmt: skip
    if mount.returncode == 0:
        try:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
            yield folder, None, "Read-only file system"
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    probe = subprocess.run(
        ["runuser", "-u", "nobody", "--", sys.executable, "-c", "import cobra_eval.cli"],
        capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(
            f"cannot make a folder root cannot write: mount failed ({mount.stderr.strip()}) "
            f"and nobody cannot run this Python ({probe.stderr.strip()[-200:]})"
        )
    folder.chmod(0o555)
    yield folder, "nobody", "Permission denied"


@pytest.fixture
def public_world() -> Iterator[World]:
    """The world, in a folder every user can read (for the CLI run as nobody)."""
    base = Path(tempfile.mkdtemp(prefix="cobra_bad_inputs_"))
    base.chmod(0o755)
    try:
        yield World(base, make_coco_world(base / "data", 40), base / "results")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_an_unwritable_output_folder_is_refused_before_anything_is_stored(
    public_world: World, cli
) -> None:
    world = public_world
    base_run(world, cli)
    with unwritable_folder(world.root) as (folder, user, reason):
        if user:  # nobody must be able to write the database, as its owner would
            for path in (world.out, *world.out.glob("cobra_eval.db*")):
                path.chmod(0o777 if path.is_dir() else 0o666)
        before = snapshot(world)
        args = ["--backend", BACKEND, "--dataset", str(world.dataset), "--metrics", "none",
                "--output_dir", str(folder), "--num_samples", "3"]  # fmt: skip
        # the database elsewhere, and writable: the run must not start in it
        code, output = _cli_process(*args, *world.db_option, as_user=user)
        assert code == 1, output
        assert_lines(output, f"Error: cannot write to output folder {folder}: {reason}")
        assert "Traceback" not in output
        assert snapshot(world) == before
        # the default database, inside that folder
        code, output = _cli_process(*args, as_user=user)
        assert code == 1, output
        assert_lines(
            output, f"Error: cannot create database {folder}/cobra_eval.db: its folder {folder} "
            "is not writable"
        )  # fmt: skip
        assert "Traceback" not in output
        assert snapshot(world) == before


# --- a database URL of no known kind -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nosuchdb://x", "nosuchdb://x"),
        ("nosuchdb://alice:hunter2@db.example/x", "nosuchdb://alice:***@db.example/x"),
    ],
)
def test_a_db_url_of_an_unknown_kind_is_refused_without_its_password(
    world: World, cli, url: str, shown: str
) -> None:
    base_run(world, cli)
    before = snapshot(world)
    for args in (world.run_args("--db", url), ["runs", "--db", url]):
        result = cli(*args)
        assert_refused(
            result,
            1,
            f"Error: --db '{shown}' is not a database this tool can open: no SQLAlchemy "
            "dialect 'nosuchdb' is installed (use a SQLite file path or e.g. "
            "postgresql+psycopg://USER@HOST/DB)",
        )
        assert "hunter2" not in result.output
    assert snapshot(world) == before


# --- a checkpoint is data: nothing in it is executed, opened or followed ------------------------


class _Pickled:
    """Unpickling this runs os.system: a pickle-looking payload that must stay a string."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


_WATCHING: list[tuple[str, tuple[Any, ...]]] = []
_ACTIVE: list[bool] = []
_HOOKED: list[bool] = []
#: Audit events of opening a file, compiling source (eval/exec of a string), running a
#: command, unpickling a global, loading a library.
_EVENTS = ("open", "compile", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
           "subprocess.Popen", "pickle.find_class", "ctypes.dlopen")  # fmt: skip


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _ACTIVE and event in _EVENTS:
        _WATCHING.append((event, args))


@contextmanager
def audited() -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    """Every file this process opens and every command or unpickling it attempts, meanwhile."""
    if not _HOOKED:
        sys.addaudithook(_audit)  # hooks cannot be removed: one, switched on and off
        _HOOKED.append(True)
    _WATCHING.clear()
    _ACTIVE.append(True)
    try:
        yield _WATCHING
    finally:
        _ACTIVE.clear()


def test_an_imported_checkpoint_is_plain_data(world: World, cli) -> None:
    canary = world.root / "canary"
    touch = f"touch {canary}"
    payloads = [
        f"__import__('os').system('{touch}')",
        f"!!python/object/apply:os.system ['{touch}']",
        base64.b64encode(pickle.dumps(_Pickled(touch))).decode(),
        f"$({touch}); `{touch}`",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "'); DROP TABLE sample_result; --",
        "\u202e\x00\x1b[31mred\x1b[0m",
    ]
    path = hand_written(world.root / "payload.json", [1, 2, 3], run_id="payload")
    doc = load_json(path)
    doc["meta"]["config"] = {"model": {"name": payloads[0]}, "method": {"name": "baseline"}}
    for k, result in enumerate(doc["results"]):
        result["generated_caption"] = payloads[k]
        result["reasoning_trace"] = payloads[k + 3]
        result["reference_captions"] = payloads
        result["metadata"] = {
            "image_path": "/etc/passwd", "file_name": "../../../../etc/passwd",
            "yaml": payloads[1], "pickle": payloads[2], "passes": [{"prompt": payloads[4]}],
        }  # fmt: skip
    path.write_text(json.dumps(doc))
    with audited() as events:
        result = cli("import", str(path), *world.db_option)
    assert result.exit_code == 0, result.output
    assert_lines(result.output, "Imported 3 results of baseline (0 already stored); created run "
                 "payload")  # fmt: skip
    assert not canary.exists()
    assert [e for e in events if e[0] not in ("open", "compile")] == []
    compiled = [repr(args[0]) for event, args in events if event == "compile"]
    assert not [c for c in compiled if "touch" in c or "popen" in c], compiled
    opened = {os.fsdecode(a[0]) for e, a in events if e == "open" and not isinstance(a[0], int)}
    assert str(path) in opened  # the hook saw the import read its file
    code_dirs = (sys.prefix, sys.base_prefix, str(REPO / "cobra_eval"), str(REPO / "migrations"))
    outside = {p for p in opened if not p.startswith((str(world.root), *code_dirs))}
    assert not {p for p in outside if "passwd" in p or "canary" in p}, outside
    assert outside <= {"/dev/urandom"}, outside
    exported = world.root / "exported.json"
    assert cli("export", "payload", *world.db_option, "-o", str(exported)).exit_code == 0
    back = load_json(exported)
    assert back["results"] == doc["results"]
    assert back["meta"]["config"]["model"] == {"name": payloads[0]}
    assert world.rows("SELECT COUNT(*) FROM sample_result") == [(3,)]
    assert not canary.exists()
