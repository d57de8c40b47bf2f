"""Samples and datasets as the runner sees them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


# slots: a run holds one per planned sample (100 bytes each fewer at 100,000 of them)
@dataclass(frozen=True, slots=True)
class Sample:
    """One image and its reference captions (none when the annotations have none)."""

    image_id: int
    image_path: Path
    references: tuple[str, ...]


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset in its stable order, problems included (selection checks them)."""

    name: str
    #: content hash of the annotation file: an edited file is another dataset
    identity: str
    split: str | None
    samples: tuple[Sample, ...]
    #: image ids that appear more than once in the annotation file
    duplicates: tuple[int, ...] = ()
    format: str = "coco"
