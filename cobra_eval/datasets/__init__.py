"""Dataset loaders: COCO captions, the Karpathy split, a folder with a JSONL/CSV, the demo."""

from __future__ import annotations

import itertools
from pathlib import Path

from cobra_eval.datasets.base import Dataset, Sample, SampleReferences
from cobra_eval.datasets.coco import CocoCaptions, load_coco
from cobra_eval.datasets.folder import SUFFIXES, load_folder
from cobra_eval.datasets.json_stream import JsonArrays, read_arrays
from cobra_eval.datasets.karpathy import KarpathySplit, is_karpathy_image
from cobra_eval.datasets.selection import Selection, select_samples
from cobra_eval.errors import DatasetError

__all__ = ["Dataset", "Sample", "SampleReferences", "Selection", "load_dataset", "select_samples"]

#: Caption files looked for when --dataset is a folder.
FOLDER_FILES = ("captions.jsonl", "captions.csv")


def load_dataset(spec: str | None, images: Path | None = None, split: str | None = None) -> Dataset:
    """Load a dataset by name or path; the format is recognised from the file."""
    if not spec:
        raise DatasetError("no dataset given: pass --dataset PATH (see --help for the formats)")
    if spec in ("demo", "demo:eval", "demo:train"):
        from cobra_eval.demo import ensure_demo_dataset

        demo_split = spec.partition(":")[2] or "eval"
        dataset = load_coco(ensure_demo_dataset(demo_split), None, demo_split)
        return Dataset("demo", dataset.identity, demo_split, dataset.samples)
    if images is not None and not images.is_dir():
        # otherwise every sample would be reported as a missing image file
        what = "is not a folder" if images.exists() else "does not exist"
        raise DatasetError(f"--images {images} {what}")
    path = Path(spec)
    if path.is_dir():
        found = [path / name for name in FOLDER_FILES if (path / name).is_file()]
        if len(found) != 1:
            raise DatasetError(
                f"--dataset {spec} is a folder; it needs exactly one of "
                f"{' or '.join(FOLDER_FILES)} "
                "(or give an annotation file: COCO captions JSON, Karpathy dataset_coco.json, "
                "a captions JSONL/CSV)"
            )
        return load_folder(found[0], images or path)
    if path.suffix.lower() in SUFFIXES:
        return load_folder(path, images)
    return _load_annotation_json(path, images, split)


def _load_annotation_json(path: Path, images: Path | None, split: str | None) -> Dataset:
    """A COCO captions or Karpathy split file, told apart by its first image entry."""

    def build(arrays: JsonArrays) -> Dataset:
        entries = arrays.items("images")
        first = next(entries, None)
        seen = itertools.chain(() if first is None else (first,), entries)
        if not is_karpathy_image(first):
            return CocoCaptions(path, images, split).read(arrays, seen)
        karpathy = KarpathySplit(path, images, split)
        for entry in seen:
            karpathy.add(entry)
        return karpathy.dataset(arrays.identity)

    return read_arrays(path, build)
