"""COCO captions annotation files (``captions_val2014.json``): ``images`` + ``annotations``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from cobra_eval.datasets.base import Dataset, Sample
from cobra_eval.datasets.json_stream import JsonArrays, read_arrays
from cobra_eval.errors import DatasetError


def load_coco(path: Path, images_dir: Path | None = None, split: str | None = None) -> Dataset:
    """Load a COCO captions file; images are looked up in images_dir (default: beside it)."""
    return read_arrays(path, lambda arrays: CocoCaptions(path, images_dir, split).read(arrays))


class CocoCaptions:
    """A COCO captions file's entries as they stream: only each image's id and file name
    and each caption are kept (and the first malformed entry of each list, to report).

    Images are looked up in images_dir (default: beside the file).
    """

    def __init__(self, path: Path, images_dir: Path | None, split: str | None) -> None:
        self.path, self.images_dir, self.split = path, images_dir, split
        self.images: list[tuple[int, str]] = []
        self.refs: dict[int, list[str]] = defaultdict(list)
        self.seen = {"images": 0, "annotations": 0}
        self.bad_image: Any = None
        self.bad_annotation: Any = None

    def read(self, arrays: JsonArrays, images: Iterable[Any] | None = None) -> Dataset:
        """The dataset of the file's image entries (or of these: the caller may have read
        the first already) and its annotations."""
        for entry in arrays.items("images") if images is None else images:
            self.add_image(entry)
        for entry in arrays.items("annotations"):
            self.add_annotation(entry)
        if not self.seen["images"] or not self.seen["annotations"]:
            # no entries: the file may lack the lists, or hold something else there
            self._check_shape(arrays.whole())
        if self.bad_image is not None:
            self._refuse(
                f"an image entry lacks an integer 'id' or a 'file_name': {str(self.bad_image)[:80]}"
            )
        if self.bad_annotation is not None:
            self._refuse(
                "an annotation lacks an integer 'image_id' or a 'caption': "
                f"{str(self.bad_annotation)[:80]}"
            )
        return self.dataset(arrays.identity)

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

    def dataset(self, identity: str) -> Dataset:
        """The dataset of the entries taken in."""
        base = self.images_dir if self.images_dir is not None else self.path.parent
        samples = tuple(
            Sample.of(image_id, base, file_name, self.refs.get(image_id, ()))
            for image_id, file_name in self.images
        )
        if not samples:
            raise DatasetError(f"dataset file {self.path} lists no images")
        return Dataset.of(self.path, identity, self.split, samples, "coco")

    def _check_shape(self, data: Any) -> None:
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            self._refuse("expected a JSON object with 'images' and 'annotations'")
        if not isinstance(data["images"], list) or not isinstance(data["annotations"], list):
            self._refuse("'images' and 'annotations' must be lists")

    def _refuse(self, problem: str) -> NoReturn:
        raise DatasetError(f"dataset file {self.path} is not in COCO captions format: {problem}")


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().isdigit()
