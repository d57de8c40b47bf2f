"""COCO captions annotation files: ``images`` + ``annotations``."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from cobra_eval.config import dataset_identity_of
from cobra_eval.datasets.base import Dataset, Sample
from cobra_eval.errors import DatasetError


def load_coco(path: Path, images_dir: Path | None = None, split: str | None = None) -> Dataset:
    """Load a COCO captions file; images are looked up in images_dir (default: beside it)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DatasetError(f"dataset file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read dataset file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"dataset file {path} is not valid JSON: {exc}") from None
    images, annotations = _check_shape(data, path)
    refs: dict[int, list[str]] = defaultdict(list)
    for ann in annotations:
        refs[int(ann["image_id"])].append(str(ann["caption"]).strip())
    base = images_dir if images_dir is not None else path.parent
    samples = []
    seen: set[int] = set()
    for image in images:
        image_id = int(image["id"])
        if image_id in seen:
            raise DatasetError(f"dataset file {path}: image id {image_id} appears twice")
        seen.add(image_id)
        if not refs.get(image_id):
            continue
        samples.append(Sample(image_id, base / str(image["file_name"]), tuple(refs[image_id])))
    if not samples:
        raise DatasetError(f"dataset file {path} has no image with a reference caption")
    return Dataset(
        name=str(path),
        identity=dataset_identity_of(path),
        split=split,
        samples=tuple(samples),
    )


def _check_shape(data: Any, path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    problem = None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        problem = "expected a JSON object with 'images' and 'annotations'"
    elif not isinstance(data["images"], list) or not isinstance(data["annotations"], list):
        problem = "'images' and 'annotations' must be lists"
    else:
        bad_img = next(
            (
                i
                for i in data["images"]
                if not isinstance(i, dict) or not {"id", "file_name"} <= i.keys()
            ),
            None,
        )
        bad_ann = next(
            (
                a
                for a in data["annotations"]
                if not isinstance(a, dict) or not {"image_id", "caption"} <= a.keys()
            ),
            None,
        )
        if bad_img is not None:
            problem = f"an image entry lacks 'id' or 'file_name': {str(bad_img)[:80]}"
        elif bad_ann is not None:
            problem = f"an annotation lacks 'image_id' or 'caption': {str(bad_ann)[:80]}"
    if problem:
        raise DatasetError(f"dataset file {path} is not in COCO captions format: {problem}")
    return data["images"], data["annotations"]
