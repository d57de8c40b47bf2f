"""The Karpathy split file (``dataset_coco.json``): the standard COCO captioning test set.

``images[]`` hold ``split`` (train/restval/val/test), ``filepath`` (val2014/...),
``filename``, ``cocoid`` and ``sentences[].raw``. The image id is the COCO id,
so results compare with any COCO-keyed tool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cobra_eval.datasets.base import Dataset, Sample
from cobra_eval.errors import DatasetError

DEFAULT_SPLIT = "test"
SPLITS = ("train", "restval", "val", "test")


def is_karpathy_image(entry: Any) -> bool:
    """Whether a file's first image entry is a Karpathy split file's."""
    return isinstance(entry, dict) and "sentences" in entry and "split" in entry


class KarpathySplit:
    """One split's samples (default test) of a Karpathy file's image entries, as they
    stream; images under images_dir/filepath/filename."""

    def __init__(self, path: Path, images_dir: Path | None, split: str | None):
        self.path, self.split = path, split or DEFAULT_SPLIT
        self.base = images_dir if images_dir is not None else path.parent
        self.samples: list[Sample] = []
        #: one folder object per filepath, shared by its samples
        self.folders: dict[str, Path] = {}
        #: the splits of the entries seen, named when the wanted one has none
        self.present: set[str] = set()

    def add(self, entry: Any) -> None:
        """Take in one image entry (of any split)."""
        if not isinstance(entry, dict):
            return
        self.present.add(str(entry.get("split")))
        if entry.get("split") != self.split:
            return
        try:
            image_id = int(entry["cocoid"])
            where = str(entry.get("filepath", ""))
            folder = self.folders.get(where) or self.folders.setdefault(where, self.base / where)
            file = str(entry["filename"])
            refs = tuple(str(s["raw"]).strip() for s in entry.get("sentences") or [])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"dataset file {self.path} is not in Karpathy split format: an image entry "
                f"lacks 'cocoid', 'filename' or 'sentences[].raw': {str(entry)[:80]}"
            ) from None
        self.samples.append(Sample.of(image_id, folder, file, refs))

    def dataset(self, identity: str) -> Dataset:
        """The split's dataset, or why it has none."""
        if not self.samples:
            raise DatasetError(
                f"dataset file {self.path} has no images in split {self.split!r} "
                f"(its splits: {', '.join(sorted(self.present)) or 'none'}); choose one "
                "with --split"
            )
        return Dataset.of(self.path, identity, self.split, tuple(self.samples), "karpathy")
