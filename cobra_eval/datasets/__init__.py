"""Dataset loaders."""

from __future__ import annotations

from pathlib import Path

from cobra_eval.datasets.base import Dataset, Sample
from cobra_eval.datasets.coco import load_coco
from cobra_eval.errors import DatasetError

__all__ = ["Dataset", "Sample", "load_dataset"]


def load_dataset(spec: str | None, images: Path | None = None, split: str | None = None) -> Dataset:
    """Load a dataset: 'demo' (or 'demo:train'), or an annotation file path (COCO captions)."""
    if not spec:
        raise DatasetError("no dataset given: pass --dataset PATH (a COCO captions JSON file)")
    if spec in ("demo", "demo:eval", "demo:train"):
        from cobra_eval.demo import ensure_demo_dataset

        demo_split = spec.partition(":")[2] or "eval"
        dataset = load_coco(ensure_demo_dataset(demo_split), None, demo_split)
        return Dataset("demo", dataset.identity, demo_split, dataset.samples)
    path = Path(spec)
    if path.is_dir():
        raise DatasetError(f"--dataset {spec} is a folder; give the annotation JSON file inside it")
    return load_coco(path, images, split)
