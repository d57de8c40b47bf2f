"""The bundled demo world: a deterministic dataset and a demo model that answers every method."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cobra_eval.datasets.coco import load_coco
from cobra_eval.demo import DEMO_MODEL_DIR, ensure_demo_dataset
from cobra_eval.demo.evaluate import (
    demo_backend,
    generate,
    has_stages_in_order,
    matches_reference,
)
from cobra_eval.demo.world import (
    REFERENCES_PER_IMAGE,
    VERSION,
    canonical_caption,
    load_scenes,
    reference_captions,
)
from cobra_eval.methods import baseline, llava_cot, scratchpad

#: The eval split's identity. A change here changes every run fingerprint made on
#: the demo dataset: bump world.VERSION with it.
EVAL_SHA256 = "14d34d7c38aaa93314c40a2355e926a4f91d4a7cfb79fbec7dc26629506a0625"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test generates into its own cache folder."""
    monkeypatch.setenv("COBRA_EVAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_default_root_is_the_cache(cache: Path) -> None:
    path = ensure_demo_dataset()
    assert path == cache / VERSION / "captions_eval.json"
    before = path.stat().st_mtime_ns
    assert ensure_demo_dataset("eval") == path
    assert path.stat().st_mtime_ns == before  # a second call reuses the split


def test_generation_is_deterministic(tmp_path: Path) -> None:
    one = ensure_demo_dataset("eval", tmp_path / "one")
    two = ensure_demo_dataset("eval", tmp_path / "two")
    assert one.read_bytes() == two.read_bytes()
    assert hashlib.sha256(one.read_bytes()).hexdigest() == EVAL_SHA256
    images = json.loads(one.read_bytes())["images"]
    for entry in images[:: len(images) // 5]:
        a, b = one.parent / entry["file_name"], two.parent / entry["file_name"]
        assert a.read_bytes() == b.read_bytes()
    assert not [p for p in one.parent.iterdir() if p.name.startswith(".tmp")]


def test_concurrent_callers_see_a_whole_split(tmp_path: Path) -> None:
    paths: list[Path] = []
    threads = [
        threading.Thread(target=lambda: paths.append(ensure_demo_dataset("eval", tmp_path)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1
    assert len(load_coco(paths[0]).samples) == len(json.loads(paths[0].read_bytes())["images"])


def test_splits_and_references() -> None:
    splits = {split: ensure_demo_dataset(split) for split in ("eval", "train")}
    data = {split: json.loads(path.read_bytes()) for split, path in splits.items()}
    assert len(data["eval"]["images"]) >= 1000
    assert len(data["train"]["images"]) >= 4000
    ids = {split: {i["id"] for i in d["images"]} for split, d in data.items()}
    assert not ids["eval"] & ids["train"]
    for split, d in data.items():
        refs: dict[int, list[str]] = {}
        for ann in d["annotations"]:
            refs.setdefault(ann["image_id"], []).append(ann["caption"])
        for image in d["images"]:
            assert image["file_name"].startswith(f"{split}/")
            scene = image["scene"]
            assert refs[image["id"]] == reference_captions(scene)
            assert len(refs[image["id"]]) == REFERENCES_PER_IMAGE
            assert len(set(refs[image["id"]])) == REFERENCES_PER_IMAGE
            assert refs[image["id"]][0] == canonical_caption(scene)
    dataset = load_coco(splits["eval"])  # the tool's own loader finds every image
    assert all(sample.image_path.is_file() for sample in dataset.samples[:50])


def test_import_is_light() -> None:
    code = "import sys, cobra_eval.demo; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bundled_model_answers_every_method() -> None:
    # the hf backend loads the folder with AutoProcessor + AutoModelForImageTextToText,
    # exactly as it loads any real checkpoint
    backend = demo_backend(DEMO_MODEL_DIR)
    rows = load_scenes(ensure_demo_dataset("eval"))[:20]
    images = [path for _, path, _ in rows]
    refs = [reference_captions(scene) for _, _, scene in rows]

    def answers(prompt: str) -> list[str]:
        return generate(backend, images, [prompt] * len(images), batch_size=8)

    captions = [
        baseline.Baseline().parse("caption", raw).caption for raw in answers(baseline.PROMPT)
    ]
    exact = sum(matches_reference(c, r) for c, r in zip(captions, refs, strict=True))
    assert exact >= 16, list(zip(captions, (r[0] for r in refs), strict=True))
    scratch = answers(scratchpad.PROMPT)
    assert sum(scratchpad.MARKER in raw for raw in scratch) >= 18, scratch
    cot = answers(llava_cot.build_prompt(True))
    assert sum(has_stages_in_order(raw) for raw in cot) >= 18, cot

    # Left padding works: one at a time gives what the batch gave.
    alone = generate(backend, images[:3], [baseline.PROMPT] * 3, batch_size=1)
    batched = generate(backend, images[:3], [baseline.PROMPT] * 3, batch_size=3)
    assert alone == batched
