"""Reading annotation files with one clear error per way they can be unreadable."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cobra_eval.errors import DatasetError


def read_bytes(path: Path) -> bytes:
    """The file's bytes, or a DatasetError saying why they cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"dataset file {path} does not exist") from None
    except IsADirectoryError:
        raise DatasetError(f"dataset file {path} is a folder") from None
    except OSError as exc:
        raise DatasetError(f"cannot read dataset file {path}: {exc.strerror}") from None


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


def content_identity(raw: bytes) -> str:
    """The dataset identity of an annotation file: a hash of its content."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()
