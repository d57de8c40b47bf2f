"""A user's own data: a folder of images plus a JSONL or CSV file of their captions.

JSONL, one image per line::

    {"file_name": "cat.jpg", "captions": ["a cat on a sofa", "a sleeping cat"]}

(``caption`` for a single one; ``image_id`` optional). CSV, one caption per
row, an image repeated on as many rows as it has captions::

    file_name,caption
    cat.jpg,a cat on a sofa
    cat.jpg,a sleeping cat

(an ``image_id`` column optional). Without image ids, an image's id is its
position in the file, counted from 0.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

from cobra_eval.datasets.base import Dataset, Sample
from cobra_eval.datasets.files import content_identity, read_bytes
from cobra_eval.errors import DatasetError

SUFFIXES = (".jsonl", ".csv")


def load_folder(path: Path, images_dir: Path | None = None) -> Dataset:
    """Load a captions JSONL/CSV; images are looked up in images_dir (default: beside it)."""
    raw = read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(f"dataset file {path} is not UTF-8 text") from None
    rows = _jsonl(path, text) if path.suffix.lower() == ".jsonl" else _csv(path, text)
    base = images_dir if images_dir is not None else path.parent
    order: list[str] = []
    captions: dict[str, list[str]] = {}
    ids: dict[str, int] = {}
    id_counts: Counter[int] = Counter()
    for where, row in rows:
        name = row.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(f"{path} {where}: no 'file_name'")
        refs = _captions(path, where, row)
        if name not in captions:
            order.append(name)
            captions[name] = []
            image_id = row.get("image_id")
            ids[name] = _image_id(path, where, image_id) if image_id not in (None, "") else len(ids)
            id_counts[ids[name]] += 1
        captions[name].extend(refs)
    if not order:
        raise DatasetError(f"dataset file {path} lists no images")
    samples = tuple(Sample(ids[n], base / n, tuple(captions[n])) for n in order)
    return Dataset(
        name=str(path),
        identity=content_identity(raw),
        split=None,
        samples=samples,
        duplicates=tuple(i for i, n in id_counts.items() if n > 1),
        format=path.suffix.lower().lstrip("."),
    )


def _jsonl(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path} line {number}: expected a JSON object")
        rows.append((f"line {number}", row))
    return rows


def _csv(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    fields = set(reader.fieldnames or ())
    if not {"file_name"} <= fields or not fields & {"caption", "captions"}:
        raise DatasetError(
            f"dataset file {path}: a CSV needs a header with file_name and caption columns "
            f"(it has: {', '.join(reader.fieldnames or []) or 'no header'})"
        )
    try:
        return [(f"row {k}", dict(row)) for k, row in enumerate(reader, start=2)]
    except csv.Error as exc:
        raise DatasetError(f"dataset file {path}: not valid CSV ({exc})") from None


def _captions(path: Path, where: str, row: dict[str, Any]) -> list[str]:
    value = row.get("captions", row.get("caption"))
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return [c.strip() for c in value if c.strip()]
    raise DatasetError(f"{path} {where}: 'captions' must be a list of strings")


def _image_id(path: Path, where: str, value: Any) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{path} {where}: image_id {value!r} is not an integer") from None
