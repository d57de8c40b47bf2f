"""The Karpathy split file (``dataset_coco.json``): the standard COCO captioning test set.

``images[]`` hold ``split`` (train/restval/val/test), ``filepath`` (val2014/...),
``filename``, ``cocoid`` and ``sentences[].raw``. The image id is the COCO id,
so results compare with any COCO-keyed tool.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from cobra_eval.datasets.base import Dataset, Sample
from cobra_eval.datasets.files import content_identity
from cobra_eval.errors import DatasetError

DEFAULT_SPLIT = "test"
SPLITS = ("train", "restval", "val", "test")


def is_karpathy(data: Any) -> bool:
    """Whether parsed JSON looks like a Karpathy split file."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return False
    first = data["images"][0] if data["images"] else None
    return isinstance(first, dict) and "sentences" in first and "split" in first


def load_karpathy(
    path: Path, data: Any, raw: bytes, images_dir: Path | None, split: str | None
) -> Dataset:
    """Samples of one split (default test); images under images_dir/filepath/filename."""
    split = split or DEFAULT_SPLIT
    base = images_dir if images_dir is not None else path.parent
    samples = []
    folders: dict[str, Path] = {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or entry.get("split") != split:
            continue
        try:
            image_id = int(entry["cocoid"])
            where = str(entry.get("filepath", ""))
            # one folder object per filepath, shared by its samples
            folder = folders.get(where) or folders.setdefault(where, base / where)
            file = str(entry["filename"])
            refs = tuple(str(s["raw"]).strip() for s in entry.get("sentences") or [])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"dataset file {path} is not in Karpathy split format: an image entry lacks "
                f"'cocoid', 'filename' or 'sentences[].raw': {str(entry)[:80]}"
            ) from None
        samples.append(Sample.of(image_id, folder, file, refs))
    if not samples:
        present = sorted({str(e.get("split")) for e in data["images"] if isinstance(e, dict)})
        raise DatasetError(
            f"dataset file {path} has no images in split {split!r} "
            f"(its splits: {', '.join(present) or 'none'}); choose one with --split"
        )
    counts = Counter(s.image_id for s in samples)
    return Dataset(
        name=str(path),
        identity=content_identity(raw),
        split=split,
        samples=tuple(samples),
        duplicates=tuple(i for i, n in counts.items() if n > 1),
        format="karpathy",
    )
