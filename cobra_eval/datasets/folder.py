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
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cobra_eval.datasets.base import Dataset, Sample
from cobra_eval.datasets.files import file_identity, open_text
from cobra_eval.errors import DatasetError

SUFFIXES = (".jsonl", ".csv")


def load_folder(path: Path, images_dir: Path | None = None) -> Dataset:
    """Load a captions JSONL/CSV; images are looked up in images_dir (default: beside it).

    The file is read a line at a time: only the samples are held, not its rows
    (at 100,000 images the rows took about 150 MB more at once).
    """
    identity = file_identity(path)
    base = images_dir if images_dir is not None else path.parent
    samples: dict[str, Sample] = {}
    with open_text(path) as handle:
        parse = _jsonl if path.suffix.lower() == ".jsonl" else _csv
        try:
            for where, row in parse(path, handle):
                name = row.get("file_name")
                if not isinstance(name, str) or not name.strip():
                    raise DatasetError(f"{path} {where}: no 'file_name'")
                refs = _captions(path, where, row)
                known = samples.get(name)
                if known is None:
                    image_id = row.get("image_id")
                    image_id = (
                        _image_id(path, where, image_id)
                        if image_id not in (None, "")
                        else len(samples)
                    )
                    samples[name] = Sample.of(image_id, base, name, refs)
                elif refs:
                    # an image on several rows (a CSV's way): its references in file order
                    samples[name] = Sample.of(
                        known.image_id, base, name, (*known.references, *refs)
                    )
        except UnicodeDecodeError:
            raise DatasetError(f"dataset file {path} is not UTF-8 text") from None
    if not samples:
        raise DatasetError(f"dataset file {path} lists no images")
    return Dataset.of(path, identity, None, tuple(samples.values()), path.suffix.lower()[1:])


def _jsonl(path: Path, lines: Iterable[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path} line {number}: expected a JSON object")
        yield f"line {number}", row


def _csv(path: Path, lines: Iterable[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(lines)
    fields = set(reader.fieldnames or ())
    if not {"file_name"} <= fields or not fields & {"caption", "captions"}:
        raise DatasetError(
            f"dataset file {path}: a CSV needs a header with file_name and caption columns "
            f"(it has: {', '.join(reader.fieldnames or []) or 'no header'})"
        )
    try:
        for k, row in enumerate(reader, start=2):
            yield f"row {k}", dict(row)
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
