"""COCO captions annotation files (``captions_val2014.json``): ``images`` + ``annotations``."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from cobra_eval.datasets.base import Dataset, Sample
from cobra_eval.datasets.files import content_identity, read_json
from cobra_eval.errors import DatasetError


def load_coco(path: Path, images_dir: Path | None = None, split: str | None = None) -> Dataset:
    """Load a COCO captions file; images are looked up in images_dir (default: beside it)."""
    data, raw = read_json(path)
    return coco_dataset(path, data, raw, images_dir, split)


def coco_dataset(
    path: Path, data: Any, raw: bytes, images_dir: Path | None, split: str | None
) -> Dataset:
    """A dataset from parsed COCO captions JSON (raw: the file's bytes, for its identity)."""
    images, annotations = _check_shape(data, path)
    refs: dict[int, list[str]] = defaultdict(list)
    for ann in annotations:
        refs[int(ann["image_id"])].append(str(ann["caption"]).strip())
    base = images_dir if images_dir is not None else path.parent
    counts = Counter(int(image["id"]) for image in images)
    samples = tuple(
        Sample.of(int(image["id"]), base, str(image["file_name"]), refs.get(int(image["id"]), ()))
        for image in images
    )
    if not samples:
        raise DatasetError(f"dataset file {path} lists no images")
    return Dataset(
        name=str(path),
        identity=content_identity(raw),
        split=split,
        samples=samples,
        duplicates=tuple(i for i, n in counts.items() if n > 1),
        format="coco",
    )


def _check_shape(data: Any, path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    problem = None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        problem = "expected a JSON object with 'images' and 'annotations'"
    elif not isinstance(data["images"], list) or not isinstance(data["annotations"], list):
        problem = "'images' and 'annotations' must be lists"
    else:
        bad_img = next((i for i in data["images"]
                        if not isinstance(i, dict) or not {"id", "file_name"} <= i.keys()
                        or not _is_int(i["id"])), None)  # fmt: skip
        bad_ann = next((a for a in data["annotations"]
                        if not isinstance(a, dict) or not {"image_id", "caption"} <= a.keys()
                        or not _is_int(a["image_id"])), None)  # fmt: skip
        if bad_img is not None:
            problem = f"an image entry lacks an integer 'id' or a 'file_name': {str(bad_img)[:80]}"
        elif bad_ann is not None:
            problem = (
                f"an annotation lacks an integer 'image_id' or a 'caption': {str(bad_ann)[:80]}"
            )
    if problem:
        raise DatasetError(f"dataset file {path} is not in COCO captions format: {problem}")
    return data["images"], data["annotations"]


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().isdigit()
