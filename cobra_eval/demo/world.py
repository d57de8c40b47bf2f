"""The demo world: two coloured shapes in a spatial relation, drawn from a fixed seed.

Each 64x64 image shows two shapes of different colours on a plain background, one
left of, right of, above or below the other. Every image has five reference
captions that paraphrase each other; reference 0 is the canonical caption the demo
model is trained to say. So that the canonical caption follows from the picture
alone, it always names first the shape whose colour comes earlier in
:data:`COLORS`, and the relation says where that shape is.

Splits are written in COCO captions format, generated on first use into a cache
folder and published atomically. The annotation file's bytes depend only on
:data:`VERSION`, the split and this code (never on Pillow, zlib or the machine),
because its sha256 is the dataset's identity in run fingerprints.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

VERSION = "demo-v1"
IMAGE_SIZE = 64
#: Colour names in canonical order, with the RGB they are drawn in.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (240, 225, 20),
    "green": (30, 170, 50),
    "blue": (40, 80, 230),
    "purple": (150, 50, 200),
}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
BACKGROUND = (128, 128, 128)
#: Image count and seed of each split; ids are offset so the splits never share one.
SPLITS: dict[str, dict[str, int]] = {
    "eval": {"count": 1000, "seed": 20240601, "first_id": 1},
    "train": {"count": 6000, "seed": 7, "first_id": 1_000_001},
}
REFERENCES_PER_IMAGE = 5

# How each relation is said: canonical phrase, converse relation, "is ..." phrase,
# where each shape sits, and a looser paraphrase ({a} and {b} are noun phrases).
_PHRASES: dict[str, dict[str, str]] = {
    "left of": {
        "canonical": "to the left of",
        "converse": "right of",
        "is": "is left of",
        "side_a": "on the left",
        "side_b": "on the right",
        "loose": "{a} beside {b} on its right",
    },
    "right of": {
        "canonical": "to the right of",
        "converse": "left of",
        "is": "is right of",
        "side_a": "on the right",
        "side_b": "on the left",
        "loose": "{a} beside {b} on its left",
    },
    "above": {
        "canonical": "above",
        "converse": "below",
        "is": "is above",
        "side_a": "at the top",
        "side_b": "at the bottom",
        "loose": "{a} placed over {b}",
    },
    "below": {
        "canonical": "below",
        "converse": "above",
        "is": "is below",
        "side_a": "at the bottom",
        "side_b": "at the top",
        "loose": "{a} placed under {b}",
    },
}


def cache_root() -> Path:
    """The default folder of this dataset version: ``$COBRA_EVAL_CACHE/demo-v1``.

    Without ``COBRA_EVAL_CACHE`` it is ``~/.cache/cobra_eval/demo-v1``.
    """
    base = os.environ.get("COBRA_EVAL_CACHE")
    parent = Path(base) if base else Path.home() / ".cache" / "cobra_eval"
    return parent / VERSION


def noun(obj: dict[str, Any]) -> str:
    """'a red circle' (or 'an orange square') for an object of a scene."""
    article = "an" if obj["color"][0] in "aeiou" else "a"
    return f"{article} {obj['color']} {obj['shape']}"


def canonical_caption(scene: dict[str, Any]) -> str:
    """Reference 0 of a scene: the caption the demo model is trained to say."""
    return f"{noun(scene['a'])} {_PHRASES[scene['relation']]['canonical']} {noun(scene['b'])}"


def reference_captions(scene: dict[str, Any]) -> list[str]:
    """The five reference captions of a scene, the canonical one first."""
    phrase = _PHRASES[scene["relation"]]
    a, b = noun(scene["a"]), noun(scene["b"])
    converse = _PHRASES[phrase["converse"]]["canonical"]
    return [
        canonical_caption(scene),
        f"{b} {converse} {a}",
        f"{a} {phrase['is']} {b}",
        f"there is {a} {phrase['side_a']} and {b} {phrase['side_b']}",
        phrase["loose"].format(a=a, b=b),
    ]


def make_scene(rng: random.Random) -> dict[str, Any]:
    """A random scene: two objects of different colours, a relation, and where to draw them.

    Object ``a`` always has the colour earlier in :data:`COLORS`, so the scene (and
    its canonical caption) is determined by the picture. Boxes are integer pixel
    coordinates ``[x0, y0, x1, y1]``.
    """
    names = list(COLORS)
    i, j = sorted(rng.sample(range(len(names)), 2))
    relation = rng.choice(RELATIONS)
    shape_a, shape_b = rng.choice(SHAPES), rng.choice(SHAPES)
    half_a, half_b = rng.randint(8, 12), rng.randint(8, 12)
    # The main axis separates the centres by at least 26 px and the cross axis moves
    # them by at most a few pixels, so the relation is never ambiguous and the shapes
    # (at most 24 px wide) never touch.
    main_a = 16 + rng.randint(-3, 3)
    main_b = 48 + rng.randint(-3, 3)
    cross = 32 + rng.randint(-10, 10)
    cross_a, cross_b = cross + rng.randint(-3, 3), cross + rng.randint(-3, 3)
    first_is_a = relation in ("left of", "above")
    if not first_is_a:
        main_a, main_b = main_b, main_a
    horizontal = relation in ("left of", "right of")
    centre_a = (main_a, cross_a) if horizontal else (cross_a, main_a)
    centre_b = (main_b, cross_b) if horizontal else (cross_b, main_b)
    return {
        "a": {"color": names[i], "shape": shape_a, "box": _box(centre_a, half_a)},
        "b": {"color": names[j], "shape": shape_b, "box": _box(centre_b, half_b)},
        "relation": relation,
    }


def _box(centre: tuple[int, int], half: int) -> list[int]:
    x, y = centre
    return [x - half, y - half, x + half, y + half]


def draw_scene(scene: dict[str, Any]) -> Any:
    """The scene as a 64x64 RGB PIL image (no anti-aliasing, so pixels are exact)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in (scene["a"], scene["b"]):
        x0, y0, x1, y1 = obj["box"]
        fill = COLORS[obj["color"]]
        if obj["shape"] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif obj["shape"] == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image


def build_split(split: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The COCO captions document of a split and its scenes, without touching the disk."""
    spec = _spec(split)
    rng = random.Random(spec["seed"])
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    scenes: list[dict[str, Any]] = []
    for k in range(spec["count"]):
        image_id = spec["first_id"] + k
        scene = make_scene(rng)
        scenes.append(scene)
        images.append(
            {
                "id": image_id,
                "file_name": f"{split}/{image_id:07d}.png",
                "width": IMAGE_SIZE,
                "height": IMAGE_SIZE,
                "scene": scene,
            }
        )
        for r, caption in enumerate(reference_captions(scene)):
            annotations.append({"id": image_id * 10 + r, "image_id": image_id, "caption": caption})
    document = {
        "info": {
            "description": "cobra_eval demo world: two coloured shapes in a spatial relation",
            "version": VERSION,
            "split": split,
            "seed": spec["seed"],
        },
        "images": images,
        "annotations": annotations,
    }
    return document, scenes


def annotation_path(split: str, root: Path | None = None) -> Path:
    """Where a split's annotation file lives (whether or not it exists yet)."""
    _spec(split)
    return (root if root is not None else cache_root()) / f"captions_{split}.json"


def ensure_demo_dataset(split: str = "eval", root: Path | None = None) -> Path:
    """The annotation JSON path of a demo split, generating it on first use.

    Images land beside the JSON in ``<root>/<split>/`` (the JSON's ``file_name``
    values are relative to its folder); ``root`` defaults to :func:`cache_root`.
    Generation is deterministic and atomic: everything is written into a temporary
    folder and renamed into place, the JSON last, so a reader (another process
    included) sees either no split or a whole one.
    """
    target = annotation_path(split, root)
    base = target.parent
    images_dir = base / split
    if target.is_file() and images_dir.is_dir():
        return target
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{split}-", dir=base))
    try:
        document, scenes = build_split(split)
        staged_images = work / split
        staged_images.mkdir()
        for entry, scene in zip(document["images"], scenes, strict=True):
            draw_scene(scene).save(work / entry["file_name"], format="PNG", optimize=False)
        staged_json = work / target.name
        staged_json.write_bytes(dump_document(document))
        _fsync_file(staged_json)
        try:
            staged_images.rename(images_dir)
        except OSError:
            # Another process published this split's images first (or a crash left
            # them without their JSON): a renamed folder is always complete, and its
            # content is the same as ours, so keep it.
            if not images_dir.is_dir():
                raise
        os.replace(staged_json, target)
        _fsync_dir(base)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def dump_document(document: dict[str, Any]) -> bytes:
    """The canonical bytes of an annotation document (compact, ASCII, newline-terminated)."""
    return (json.dumps(document, ensure_ascii=True, separators=(",", ":")) + "\n").encode()


def load_scenes(annotation_file: Path) -> list[tuple[int, Path, dict[str, Any]]]:
    """(image id, image path, scene) for every image of a demo annotation file."""
    data = json.loads(annotation_file.read_bytes())
    return [
        (int(i["id"]), annotation_file.parent / i["file_name"], i["scene"]) for i in data["images"]
    ]


def _spec(split: str) -> dict[str, int]:
    if split not in SPLITS:
        raise ValueError(f"unknown demo split {split!r}; expected one of {sorted(SPLITS)}")
    return SPLITS[split]


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Some filesystems cannot fsync a directory; the rename is atomic all the same.
    with contextlib.suppress(OSError):
        _fsync_file(path)
