"""A small deterministic backend and a synthetic COCO-format dataset, for tests and the demo.

They live under tests/ (never in the package): the real model backend and the
bundled demo world come with their own issue. The backend is loaded exactly as a
user's plugin is: ``--backend tests.stand_in:EchoBackend``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cobra_eval.backends import BackendOptions, GenerationRequest
from cobra_eval.config import GenerationParams
from cobra_eval.images import load_image

COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["square", "circle", "triangle"]
RELATIONS = ["above", "below", "left of", "right of"]
#: Seconds each generate() call sleeps, so kill tests can hit a run mid-batch.
DELAY_ENV = "COBRA_TEST_DELAY"
#: A file every generation appends "pid image_file time" to.
GENLOG_ENV = "COBRA_TEST_GENLOG"


class EchoBackend:
    """Answers from a hash of the image bytes and the prompt: same input, same text."""

    def __init__(self, options: BackendOptions):
        self.model = options.model or "echo-v1"

    def identity(self) -> dict[str, Any]:
        return {"name": self.model, "revision": "1"}

    def generate(
        self, requests: Sequence[GenerationRequest], params: GenerationParams
    ) -> list[str]:
        answers = [self._answer(r, params) for r in requests]
        # the delay comes after the answers exist: a kill in it loses generated, uncommitted work
        delay = float(os.environ.get(DELAY_ENV, "0") or 0)
        if delay:
            time.sleep(delay)
        return answers

    def _answer(self, request: GenerationRequest, params: GenerationParams) -> str:
        load_image(request.image_path)  # a corrupt or missing image fails this sample, as in a VLM
        data = request.image_path.read_bytes()
        log = os.environ.get(GENLOG_ENV)
        if log:  # one line per generation, so tests can see who generated what, and when
            with open(log, "a") as handle:
                handle.write(f"{os.getpid()} {request.image_path.name} {time.time():.6f}\n")
        seed = hashlib.sha256(data + request.prompt.encode() + str(params.seed).encode()).digest()
        a, b = COLORS[seed[0] % 6], COLORS[seed[1] % 6]
        s1, s2 = SHAPES[seed[2] % 3], SHAPES[seed[3] % 3]
        caption = f"a {a} {s1} {RELATIONS[seed[4] % 4]} a {b} {s2}"
        if "Caption:" in request.prompt:
            return f"Objects: {a} {s1}, {b} {s2}.\nCaption: {caption}"
        return caption


def make_coco_world(root: Path, n: int, *, seed: int = 0) -> Path:
    """n tiny PNG images with 5 captions each, in COCO captions format; returns the JSON path."""
    from PIL import Image

    images_dir = root
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for k in range(n):
        image_id = 1000 + 7 * k + seed
        color = tuple((k * 37 + c * 91 + seed) % 256 for c in range(3))
        name = f"img_{image_id:06d}.png"
        Image.new("RGB", (8, 8), color).save(images_dir / name)
        images.append({"id": image_id, "file_name": name, "width": 8, "height": 8})
        for j in range(5):
            annotations.append(
                {
                    "id": image_id * 10 + j,
                    "image_id": image_id,
                    "caption": f"caption {j} of a {COLORS[(k + j) % 6]} {SHAPES[k % 3]}",
                }
            )
    path = root / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


if __name__ == "__main__":  # python -m tests.stand_in DIR N  (used by `make demo`)
    print(make_coco_world(Path(sys.argv[1]), int(sys.argv[2])))
