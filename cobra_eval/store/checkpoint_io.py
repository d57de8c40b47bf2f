"""The JSON checkpoint contract: models, file names, atomic writes, validated reads.

Shape (see the checkpointing guide): top-level ``meta``, ``checkpoint_info``,
``results``; final results files share it with ``meta.is_checkpoint = false``.
Beyond the guide, ``corpus_metrics`` holds the corpus scores of the file's
successful results when they were computed for exactly that set.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import secrets
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cobra_eval.errors import CheckpointFileError, StoreError
from cobra_eval.store.engine import process_alive

FORMAT_VERSION = 1
#: Files larger than this are refused before parsing: no real run comes close.
MAX_FILE_BYTES = 2 * 1024**3
STAMP_FORMAT = "%Y%m%d_%H%M%S"
#: Run ids and method names name folders under --output_dir: no separators, no leading dot.
FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class ResultRecord(BaseModel):
    """One sample's result, exactly as it appears in ``results[]``."""

    model_config = ConfigDict(extra="forbid")

    image_id: int = Field(description="Dataset image id.")
    reference_captions: list[str] = Field(description="The dataset's reference captions.")
    generated_caption: str = Field(description="The method's final caption ('' when failed).")
    reasoning_trace: str = Field(
        "", description="Scratchpad / reasoning text, if the method has one."
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Method metadata: parse status, passes, and status/error of failed samples.",
    )
    metrics: dict[str, float | None] = Field(
        default_factory=dict, description="Per-sample metrics."
    )

    @property
    def status(self) -> str:
        """ok, or failed when generation raised for this sample."""
        return "failed" if self.metadata.get("status") == "failed" else "ok"


class CheckpointMeta(BaseModel):
    """``meta``: what produced the file and how far it got."""

    model_config = ConfigDict(extra="allow")

    timestamp: str = Field(description="ISO time of export, local time, seconds precision.")
    config: dict[str, Any] = Field(description="Full config: semantic parts plus 'settings'.")
    method: str = Field(description="The method whose results these are.")
    samples_processed: int = Field(ge=0, description="Results in this file.")
    total_samples: int = Field(ge=0, description="Samples the run was asked for.")
    is_checkpoint: bool = Field(description="True for periodic snapshots, False for final results.")
    run_id: str | None = Field(None, description="The run in the database (beyond the guide).")
    tool_version: str | None = Field(None, description="cobra_eval version that wrote it.")
    format_version: int = Field(FORMAT_VERSION, description="Version of this file shape.")

    @field_validator("method", "run_id")
    @classmethod
    def _folder_name(cls, value: str | None) -> str | None:
        # both become folders of the output dir: '../x' in a file must not write outside it
        if value is not None and not FOLDER_NAME.match(value):
            raise ValueError(
                f"{value!r} cannot name a folder (use letters, digits, '.', '_' and '-', "
                "starting with a letter or digit)"
            )
        return value


class CheckpointInfo(BaseModel):
    """``checkpoint_info``: progress counts, readable with ``jq '.checkpoint_info'``."""

    model_config = ConfigDict(extra="forbid")

    processed_count: int = Field(ge=0)
    remaining_count: int = Field(ge=0)


class CorpusMetrics(BaseModel):
    """``corpus_metrics``: corpus scores of the successful results (``jq '.corpus_metrics'``)."""

    model_config = ConfigDict(extra="forbid")

    n_samples: int = Field(ge=0, description="Successful results the scores cover.")
    scope: str = Field(description="checkpoint | final | rescore: when they were computed.")
    scores: dict[str, float] = Field(description="Official metric name -> value.")


class CheckpointFile(BaseModel):
    """A whole checkpoint or final results file."""

    model_config = ConfigDict(extra="forbid")

    meta: CheckpointMeta
    checkpoint_info: CheckpointInfo
    corpus_metrics: CorpusMetrics | None = None
    results: list[ResultRecord]

    @field_validator("results")
    @classmethod
    def _unique_ids(cls, results: list[ResultRecord]) -> list[ResultRecord]:
        seen: set[int] = set()
        dupes = []
        for item in results:
            if item.image_id in seen:
                dupes.append(item.image_id)
            seen.add(item.image_id)
        if dupes:
            shown = ", ".join(str(d) for d in dupes[:5])
            raise ValueError(f"duplicate image_id in results: {shown}")
        return results


def checkpoint_name(method: str, count: int, when: datetime) -> str:
    """checkpoint_{method}_{count}_{YYYYmmdd_HHMMSS}.json"""
    return f"checkpoint_{method}_{count}_{when.strftime(STAMP_FORMAT)}.json"


def latest_name(method: str) -> str:
    """checkpoint_{method}_latest.json"""
    return f"checkpoint_{method}_latest.json"


def final_name(method: str) -> str:
    """results_{method}.json: the final results of a method in a run."""
    return f"results_{method}.json"


def method_dir(output_dir: Path, run_id: str, method: str) -> Path:
    """<output_dir>/<run_id>/<method>/"""
    for name in (run_id, method):
        if not FOLDER_NAME.match(name):
            raise StoreError(f"{name!r} cannot name a folder under {output_dir}")
    return output_dir / run_id / method


def dumps(doc: CheckpointFile) -> bytes:
    """The one serialisation: export -> import -> export is byte-identical."""
    # a file without corpus scores has no corpus_metrics key rather than a null one
    skip = {"corpus_metrics"} if doc.corpus_metrics is None else None
    data = doc.model_dump(mode="json", exclude=skip)
    # orjson: the same 2-space layout as json.dumps(indent=2), UTF-8, ~5x faster (the
    # stdlib's C encoder is not used with indent, and exports are whole-run snapshots)
    return dump_json(data, newline=True)


def dump_json(value: Any, *, newline: bool = False) -> bytes:
    """JSON by orjson, 2-space indent; what orjson refuses to write is written too, exactly."""
    option = orjson.OPT_INDENT_2 | (orjson.OPT_APPEND_NEWLINE if newline else 0)
    try:
        return orjson.dumps(value, option=option)
    except orjson.JSONEncodeError:
        # integers beyond 64 bits, strings with lone surrogates: both are valid JSON
        # (stdlib-parsed metadata may hold them), orjson merely refuses to write them
        return orjson.dumps(orjson_safe(value), option=option)


_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def orjson_safe(value: Any) -> Any:
    """value with what orjson cannot write replaced by pre-written JSON (same layout)."""
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if _INT_MIN <= value <= _INT_MAX else orjson.Fragment(str(value).encode())
    if isinstance(value, str):
        return value if _utf8_ok(value) else orjson.Fragment(json.dumps(value).encode())
    if isinstance(value, dict):
        if all(isinstance(key, str) and _utf8_ok(key) for key in value):
            return {key: orjson_safe(item) for key, item in value.items()}
        # a key orjson cannot write: this object on one line, by the stdlib, ASCII-escaped
        return orjson.Fragment(json.dumps(_finite(value), ensure_ascii=True).encode())
    if isinstance(value, (list, tuple)):
        return [orjson_safe(item) for item in value]
    return value


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _finite(value: Any) -> Any:
    """NaN and infinities as null, as orjson writes them (the stdlib would write NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


#: 19 digits in a row may be an integer orjson reads as a float (beyond 64 bits): found
#: as 19 zeros once every digit is mapped to "0" (10x faster than a regular expression)
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_DIGITS = b"0" * 19


def loads_exact(data: str | bytes) -> Any:
    """JSON as the stdlib reads it, through orjson where that gives the same values.

    orjson refuses NaN, lone surrogates and numbers beyond a double, and reads
    integers beyond 64 bits as floats: those texts go to the stdlib (whose
    errors, with line and column, are the ones raised).
    """
    try:
        raw = data.encode() if isinstance(data, str) else data
    except UnicodeEncodeError:  # a lone surrogate in the text itself
        return json.loads(data)
    if _LONG_DIGITS not in raw.translate(_DIGITS_TO_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def write_stream_atomic(
    path: Path, chunks: Iterable[bytes], *, sync_folder: bool = True
) -> tuple[int, str]:
    """Write chunks via a temp file in the same folder, fsync, rename; returns (size, sha256).

    A kill or an error at any moment leaves either the old file or the new one,
    never a partial file under the real name (the temp file is removed on errors;
    one a kill leaves is cleared by remove_stale_temps). sync_folder=False leaves
    the folder's fsync to the caller (several renames, one fsync).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
    digest = hashlib.sha256()
    size = 0
    try:
        # mkstemp makes 0600 files; results in a shared folder must be as readable as any file
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_folder(path.parent)
    return size, digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder, fsync, rename, fsync the folder.

    A kill at any moment leaves either the old file or the new one, never a
    truncated file under the real name.
    """
    write_stream_atomic(path, (data,))


def link_atomic(source: Path, path: Path, *, sync_folder: bool = True) -> bool:
    """Make path another name of source's file (a hard link), replacing path atomically.

    The link is made under a temp name in the same folder, then renamed over
    path: a kill leaves the old path or the new one. Where hard links are not
    supported, path becomes a copy of source, written atomically. True for a link.
    """
    for _ in range(8):
        tmp = path.parent / f"{_temp_prefix(path.name)}{secrets.token_hex(8)}{TEMP_SUFFIX}"
        try:
            os.link(source, tmp)
        except FileExistsError:
            continue  # another temp file has this random name: draw again
        except OSError:
            # no hard links on this file system (FAT, some network or FUSE mounts), or
            # too many links: a copy; if the disk is full that fails too, and says so
            write_stream_atomic(path, _file_chunks(source), sync_folder=sync_folder)
            return False
        break
    else:
        raise FileExistsError(f"cannot find an unused temp name beside {path}")
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_folder(path.parent)
    return True


def _file_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk


def fsync_folder(folder: Path) -> None:
    """Make the renames in folder durable (a power loss keeps the new names)."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


TEMP_SUFFIX = ".tmp"
#: A temp file this old is abandoned even if its writer cannot be checked (another host).
STALE_TEMP_SECONDS = 3600.0


def _temp_prefix(name: str) -> str:
    return f".{name}.{socket.gethostname()}.{os.getpid()}."


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temp files left by writers that died mid-write (killed between write and rename).

    A temp file is stale when its writer was a process of this host that no longer
    exists, or when it is older than an hour; a live writer's file is left alone.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    host = socket.gethostname()
    now = time.time()
    for path in folder.glob(f".*{TEMP_SUFFIX}"):
        match = _TEMP.match(path.name)
        if match is None:
            continue
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
        dead_writer = match["host"] == host and not process_alive(int(match["pid"]))
        if dead_writer or age > STALE_TEMP_SECONDS:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def read_checkpoint(path: Path) -> CheckpointFile:
    """Read and validate a checkpoint/results file, or raise one clear CheckpointFileError."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise CheckpointFileError(f"{path}: cannot read: {exc.strerror}") from None
    if path.is_dir():
        raise CheckpointFileError(f"{path}: is a directory, not a JSON results file")
    if size > MAX_FILE_BYTES:
        raise CheckpointFileError(
            f"{path}: {size} bytes is larger than the {MAX_FILE_BYTES} bytes "
            "a results file may have"
        )
    try:
        raw = path.read_bytes()
        data = loads_exact(raw)
    except UnicodeDecodeError:
        raise CheckpointFileError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        # a string never closed runs to the end: the file stops inside it
        unterminated = exc.msg.startswith("Unterminated string")
        truncated = unterminated or exc.pos >= len(raw.rstrip())
        hint = " (the file looks truncated)" if truncated else ""
        what = "unterminated string" if unterminated else exc.msg
        raise CheckpointFileError(
            f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {what}{hint}"
        ) from None
    return parse_checkpoint(data, str(path))


def parse_checkpoint(data: Any, source: str) -> CheckpointFile:
    """Validate decoded JSON against the contract."""
    if not isinstance(data, dict):
        raise CheckpointFileError(
            f"{source}: not a checkpoint or results file: expected a JSON object with "
            f"'meta', 'checkpoint_info' and 'results', got {type(data).__name__}"
        )
    missing = [key for key in ("meta", "checkpoint_info", "results") if key not in data]
    if missing:
        shown = ", ".join(repr(m) for m in missing)
        raise CheckpointFileError(f"{source}: not a checkpoint or results file: missing {shown}")
    try:
        return CheckpointFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:5]:
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(
                "."
            )
            problems.append(f"{where or 'file'}: {_plain(err)}")
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        raise CheckpointFileError(
            f"{source}: wrong shape for a checkpoint or results file: {'; '.join(problems)}{more}"
        ) from None


def _plain(err: Any) -> str:
    """A validation problem in the file's terms (JSON types), not pydantic's internals."""
    kind = err["type"]
    if kind in ("model_type", "dict_type"):
        return "should be a JSON object"
    if kind == "list_type":
        return "should be a JSON array"
    if kind == "value_error":  # our validators' own sentences, without "Value error, "
        return str(err.get("ctx", {}).get("error", err["msg"]))
    return str(err["msg"])


_TEMP = re.compile(r"^\.(?P<name>.+\.json)\.(?P<host>[^.]+(?:\.[^.]+)*)\.(?P<pid>\d+)\..+\.tmp$")
_NUMBERED = re.compile(r"^checkpoint_(?P<method>.+)_(?P<count>\d+)_(?P<stamp>\d{8}_\d{6})\.json$")


def parse_numbered(name: str, method: str) -> tuple[int, str] | None:
    """(count, stamp) of a numbered checkpoint file name of this method, else None."""
    match = _NUMBERED.match(name)
    if match is None or match["method"] != method:
        return None
    return int(match["count"]), match["stamp"]


def find_candidates(output_dir: Path, method: str) -> Iterator[Path]:
    """Checkpoint and final results files of a method under output_dir, newest first."""
    if not output_dir.is_dir():
        return iter(())
    found = []
    for run_dir in output_dir.iterdir():
        folder = run_dir / method
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            name = path.name
            match = _NUMBERED.match(name)
            if (match and match["method"] == method) or name in (
                latest_name(method),
                final_name(method),
            ):
                try:
                    found.append((path.stat().st_mtime, name, path))
                except OSError:
                    continue
    found.sort(reverse=True)
    return iter(path for _, _, path in found)
