"""Reading annotation files with one clear error per way they can be unreadable."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from cobra_eval.errors import DatasetError


def read_bytes(path: Path) -> bytes:
    """The file's bytes, or a DatasetError saying why they cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise unreadable(path, exc) from None


def open_text(path: Path) -> TextIO:
    """The file as UTF-8 text (a BOM skipped, line ends kept for csv), to read as a stream."""
    try:
        return path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise unreadable(path, exc) from None


def open_binary(path: Path) -> BinaryIO:
    """The file's bytes as a stream, or a DatasetError saying why they cannot be read."""
    try:
        return path.open("rb")
    except OSError as exc:
        raise unreadable(path, exc) from None


def blocks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    """The file's bytes a block at a time."""
    with open_binary(path) as handle:
        try:
            while block := handle.read(size):
                yield block
        except OSError as exc:
            raise unreadable(path, exc) from None


def file_identity(path: Path) -> str:
    """The dataset identity of an annotation file: a hash of its content (read in blocks)."""
    digest = hashlib.sha256()
    for block in blocks(path):
        digest.update(block)
    return "sha256:" + digest.hexdigest()


def unreadable(path: Path, exc: OSError) -> DatasetError:
    """The one clear error for a dataset file that cannot be read."""
    if isinstance(exc, FileNotFoundError):
        return DatasetError(f"dataset file {path} does not exist")
    if isinstance(exc, IsADirectoryError):
        return DatasetError(f"dataset file {path} is a folder")
    return DatasetError(f"cannot read dataset file {path}: {exc.strerror}")


def read_json(path: Path) -> tuple[Any, bytes]:
    """Parsed JSON and the raw bytes it came from."""
    raw = read_bytes(path)
    try:
        return json.loads(raw), raw
    except UnicodeDecodeError:
        raise DatasetError(f"dataset file {path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"dataset file {path} is not valid JSON (line {exc.lineno} column {exc.colno}: "
            f"{exc.msg})"
        ) from None
