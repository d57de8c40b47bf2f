"""Samples and datasets as the runner sees them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Joins a sample's references into one string while it is held: one object where a
#: tuple and one string per reference cost about 270 bytes more per sample.
_JOIN = "\x00"


# slots, a shared folder and joined references: a run holds one per planned sample, and
# at 100,000 of them each byte per sample is 100 KB (about 500 bytes each fewer than a
# Path and a tuple of strings)
@dataclass(frozen=True, slots=True)
class Sample:
    """One image and its reference captions (none when the annotations have none).

    Made with ``Sample.of``; ``image_path`` and ``references`` are built when read.
    """

    image_id: int
    #: the image's folder: one object shared by the samples of a dataset's folder
    folder: Path
    #: the image's path under folder
    file_name: str
    #: the references joined by _JOIN, or as a tuple when one of them holds it or there
    #: are fewer than two
    packed_references: str | tuple[str, ...]

    @classmethod
    def of(cls, image_id: int, folder: Path, file_name: str, references: Sequence[str]) -> Sample:
        """A sample of the image folder / file_name with these references."""
        refs = tuple(references)
        packed = refs if len(refs) < 2 or any(_JOIN in r for r in refs) else _JOIN.join(refs)
        return cls(image_id, folder, file_name, packed)

    @property
    def image_path(self) -> Path:
        return self.folder / self.file_name

    @property
    def references(self) -> tuple[str, ...]:
        packed = self.packed_references
        return packed if isinstance(packed, tuple) else tuple(packed.split(_JOIN))

    @property
    def has_references(self) -> bool:
        return bool(self.packed_references)


class SampleReferences(Mapping[int, tuple[str, ...]]):
    """The references of the samples that have some, by image id, unpacked when read.

    A scorer looks a batch's references up here instead of holding a copy of every
    planned sample's.
    """

    def __init__(self, samples: Mapping[int, Sample]):
        self._samples = samples
        # counted when first asked: a run without CIDEr-D never asks (20-40 ms at 100k)
        self._count: int | None = None

    def __getitem__(self, image_id: int) -> tuple[str, ...]:
        sample = self._samples[image_id]
        if not sample.has_references:
            raise KeyError(image_id)
        return sample.references

    def __contains__(self, image_id: object) -> bool:
        sample = self._samples.get(image_id)  # type: ignore[call-overload]
        return sample is not None and sample.has_references

    def __iter__(self) -> Iterator[int]:
        return (i for i, s in self._samples.items() if s.has_references)

    def __len__(self) -> int:
        if self._count is None:
            self._count = sum(1 for s in self._samples.values() if s.has_references)
        return self._count


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

    @classmethod
    def of(
        cls, path: Path, identity: str, split: str | None, samples: tuple[Sample, ...], form: str
    ) -> Dataset:
        """The dataset of a file's samples, noting the image ids that appear more than once."""
        counts = Counter(s.image_id for s in samples)
        duplicates = tuple(i for i, n in counts.items() if n > 1)
        return cls(str(path), identity, split, samples, duplicates, form)
