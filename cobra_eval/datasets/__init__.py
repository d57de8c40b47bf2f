"""Dataset loaders."""

from __future__ import annotations

from pathlib import Path

from cobra_eval.datasets.base import Dataset, Sample
from cobra_eval.datasets.coco import load_coco
from cobra_eval.errors import DatasetError

__all__ = ["Dataset", "Sample", "load_dataset"]


def load_dataset(spec: str | None, images: Path | None = None, split: str | None = None) -> Dataset:
    """Load a dataset from an annotation file path (COCO captions format)."""
    if not spec:
        raise DatasetError("no dataset given: pass --dataset PATH (a COCO captions JSON file)")
    path = Path(spec)
    if path.is_dir():
        raise DatasetError(f"--dataset {spec} is a folder; give the annotation JSON file inside it")
    return load_coco(path, images, split)
