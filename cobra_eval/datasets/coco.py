"""COCO captions annotation files (``captions_val2014.json``): ``images`` + ``annotations``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cobra_eval.datasets.base import Dataset, Sample
from cobra_eval.datasets.json_stream import JsonArrays, read_arrays
from cobra_eval.errors import DatasetError


def load_coco(path: Path, images_dir: Path | None = None, split: str | None = None) -> Dataset:
    """Load a COCO captions file; images are looked up in images_dir (default: beside it)."""

    def build(arrays: JsonArrays) -> Dataset:
        identity = arrays.identity
        return CocoCaptions().read(
            arrays, arrays.items("images"), path, identity, images_dir, split
        )

    return read_arrays(path, build)


class CocoCaptions:
    """A COCO captions file's entries as they stream: only each image's id and file name
    and each caption are kept (and the first malformed entry of each list, to report)."""

    def __init__(self) -> None:
        self.images: list[tuple[int, str]] = []
        self.refs: dict[int, list[str]] = defaultdict(list)
        self.seen = {"images": 0, "annotations": 0}
        self.bad_image: Any = None
        self.bad_annotation: Any = None

    def read(
        self,
        arrays: JsonArrays,
        images: Iterable[Any],
        path: Path,
        identity: str,
        images_dir: Path | None,
        split: str | None,
    ) -> Dataset:
        """The dataset of these image entries and the file's annotations."""
        for entry in images:
            self.add_image(entry)
        for entry in arrays.items("annotations"):
            self.add_annotation(entry)
        if not self.seen["images"] or not self.seen["annotations"]:
            # no entries: the file may lack the lists, or hold something else there
            self._check_shape(arrays.whole(), path)
        problem = None
        if self.bad_image is not None:
            problem = (
                f"an image entry lacks an integer 'id' or a 'file_name': {str(self.bad_image)[:80]}"
            )
        elif self.bad_annotation is not None:
            problem = (
                "an annotation lacks an integer 'image_id' or a 'caption': "
                f"{str(self.bad_annotation)[:80]}"
            )
        if problem:
            raise DatasetError(f"dataset file {path} is not in COCO captions format: {problem}")
        return self.dataset(path, identity, images_dir, split)

    def add_image(self, entry: Any) -> None:
        self.seen["images"] += 1
        if isinstance(entry, dict) and {"id", "file_name"} <= entry.keys() and _is_int(entry["id"]):
            self.images.append((int(entry["id"]), str(entry["file_name"])))
        elif self.bad_image is None:
            self.bad_image = entry

    def add_annotation(self, entry: Any) -> None:
        self.seen["annotations"] += 1
        if isinstance(entry, dict) and {"image_id", "caption"} <= entry.keys() \
                and _is_int(entry["image_id"]):  # fmt: skip
            self.refs[int(entry["image_id"])].append(str(entry["caption"]).strip())
        elif self.bad_annotation is None:
            self.bad_annotation = entry

    def dataset(
        self, path: Path, identity: str, images_dir: Path | None, split: str | None
    ) -> Dataset:
        base = images_dir if images_dir is not None else path.parent
        samples = tuple(
            Sample.of(image_id, base, file_name, self.refs.get(image_id, ()))
            for image_id, file_name in self.images
        )
        if not samples:
            raise DatasetError(f"dataset file {path} lists no images")
        return Dataset.of(path, identity, split, samples, "coco")

    @staticmethod
    def _check_shape(data: Any, path: Path) -> None:
        problem = None
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            problem = "expected a JSON object with 'images' and 'annotations'"
        elif not isinstance(data["images"], list) or not isinstance(data["annotations"], list):
            problem = "'images' and 'annotations' must be lists"
        if problem:
            raise DatasetError(f"dataset file {path} is not in COCO captions format: {problem}")


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().isdigit()
