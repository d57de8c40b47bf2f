"""The report's per-sample gallery data: one entry per image, every method's result in it.

The page renders this JSON itself (a page at a time), so its shape is kept small:
short keys, metric values as arrays aligned to one list of names, each prompt
text stored once, each thumbnail once per image, fields that repeat another
field left out (the page falls back to the field they repeat), and a raw output
stored without the reasoning and caption cut from it (see ``raw_parts``).
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cobra_eval.analysis.corpus_ci import METRIC_ORDER
from cobra_eval.errors import CobraEvalError
from cobra_eval.images import MAX_PIXELS
from cobra_eval.store import MethodProgress, RunInfo
from cobra_eval.store.checkpoint_io import ResultRecord

#: Longest side of an embedded thumbnail, in pixels.
THUMBNAIL_PX = 96
#: JPEG quality of thumbnails: a 96 px photo stays recognisable in about 1.3-1.9 kB.
THUMBNAIL_QUALITY = 60
#: A reasoning line's label, as the page's script matches it too (an ASCII-only pattern).
LINE_LABEL = re.compile(r"[A-Za-z][A-Za-z _-]{0,30}: ")
#: Shorter reasoning lines are not worth a reference in a raw output.
MIN_LINE_PIECE = 16
#: Digits kept of every metric value: enough to sort and read, and it keeps the page small.
DIGITS = 4


def metric_names(results: Mapping[str, Iterable[ResultRecord]]) -> list[str]:
    """Metric keys present in any result: official ones in their usual order, others after."""
    present = {k for records in results.values() for r in records for k in r.metrics or {}}
    known = [k for k in METRIC_ORDER if k in present]
    return known + sorted(present - set(known))


def gallery_data(
    methods: Sequence[str],
    results: Mapping[str, Sequence[ResultRecord]],
    *,
    order: Sequence[int] = (),
    thumbnails: Mapping[int, str | None] | None = None,
) -> dict[str, Any]:
    """The gallery's JSON: methods, metric names, interned prompts and one entry per image.

    Images come in ``order`` (the run's plan), then any other image by id.
    ``thumbnails`` maps image ids to data URLs; a missing one shows a placeholder.
    """
    metrics = metric_names(results)
    thumbnails = thumbnails or {}
    prompts: dict[str, int] = {}
    samples: dict[int, dict[str, Any]] = {}
    rank = {image_id: k for k, image_id in enumerate(order)}
    for method in methods:
        for record in results.get(method, ()):
            entry = samples.get(record.image_id)
            if entry is None:
                entry = samples[record.image_id] = {
                    "id": record.image_id,
                    "img": thumbnails.get(record.image_id),
                    "refs": list(record.reference_captions),
                    "r": {},
                }
            elif not entry["refs"] and record.reference_captions:
                entry["refs"] = list(record.reference_captions)
            entry["r"][method] = _cell(record, metrics, prompts)
    ordered = sorted(samples.values(), key=lambda s: (rank.get(s["id"], len(rank)), s["id"]))
    for position, entry in enumerate(ordered):
        entry["pos"] = position
    statuses = sorted({cell["p"] for s in ordered for cell in s["r"].values()})
    return {
        "methods": list(methods),
        "metrics": metrics,
        "statuses": statuses,
        "prompts": list(prompts),
        "samples": ordered,
    }


def _cell(record: ResultRecord, metrics: Sequence[str], prompts: dict[str, int]) -> dict[str, Any]:
    metadata = record.metadata or {}
    failed = record.status == "failed"
    cell: dict[str, Any] = {
        "c": record.generated_caption,
        "p": "failed" if failed else str(metadata.get("parse_status") or "ok"),
        "m": _values(record.metrics, metrics),
    }
    if record.reasoning_trace:
        cell["t"] = record.reasoning_trace
    if failed:
        cell["e"] = str(metadata.get("error") or "generation failed")
    passes = metadata.get("passes")
    if isinstance(passes, list):
        cell["ps"] = [
            _pass(item, k, cell, metrics, prompts)
            for k, item in enumerate(passes)
            if isinstance(item, dict)
        ]
    return cell


def _pass(
    item: Mapping[str, Any],
    index: int,
    cell: Mapping[str, Any],
    metrics: Sequence[str],
    prompts: dict[str, int],
) -> dict[str, Any]:
    caption = str(item.get("caption", ""))
    reasoning = str(item.get("reasoning", ""))
    raw = str(item.get("raw_output", ""))
    prompt = str(item.get("prompt", ""))
    status = str(item.get("parse_status", "ok"))
    values = _values(item.get("metrics"), metrics)
    out: dict[str, Any] = {
        "n": str(item.get("name", f"pass{index + 1}")),
        "q": prompts.setdefault(prompt, len(prompts)),
    }
    # left out when equal to what the page falls back to: the result's parse status,
    # metrics, caption and reasoning, and for the raw output the pass's own caption
    if status != cell["p"]:
        out["p"] = status
    if values != cell["m"]:
        out["m"] = values
    if caption != cell["c"]:
        out["c"] = caption
    if reasoning != cell.get("t", ""):
        out["t"] = reasoning
    if raw != caption:
        out["raw"] = raw_parts(raw, reasoning, caption)
    return out


def raw_parts(raw: str, reasoning: str, caption: str) -> str | list[str | int]:
    """A raw output with the text parsed out of it replaced by numbers, or raw if none was.

    The reasoning and caption are cut from the raw output, so storing them again
    would nearly double a report's text. The page joins the parts back, putting
    for 0 the pass's reasoning, for 1 its caption, and for k + 2 line k of the
    reasoning without its ``Label: `` (llava_cot's reasoning is its stages'
    texts, one labelled line each, that appear in the raw output between tags).
    """
    lines = reasoning.split("\n")
    # the caption last: it may also occur inside a stage's text, which it would then split
    pieces: list[tuple[int, str]] = [(0, reasoning)]
    pieces += [(k + 2, reasoning_line(line)) for k, line in enumerate(lines) if len(lines) > 1]
    pieces.append((1, caption))
    parts: list[str | int] = [raw]
    for code, piece in pieces:
        if len(piece) < (1 if code < 2 else MIN_LINE_PIECE):
            continue
        for k, part in enumerate(parts):
            if isinstance(part, str) and piece in part:
                head, _, tail = part.partition(piece)
                parts[k : k + 1] = [p for p in (head, code, tail) if p != ""]
                break
    return raw if parts == [raw] else parts


def reasoning_line(line: str) -> str:
    """A line of a reasoning trace without its ``Label: `` prefix (the page strips it alike)."""
    label = LINE_LABEL.match(line)
    return line[label.end() :] if label else line


def _values(found: Any, metrics: Sequence[str]) -> list[float | None]:
    found = found if isinstance(found, Mapping) else {}
    out: list[float | None] = []
    for name in metrics:
        value = found.get(name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        out.append(round(float(value), DIGITS) if ok and math.isfinite(value) else None)
    return out


# -- images ------------------------------------------------------------------


def image_paths(
    run: RunInfo, methods: Sequence[MethodProgress], wanted: Iterable[int]
) -> tuple[dict[int, Path], list[str]]:
    """Where the run's images are now, by id, and notes on what could not be found.

    The dataset is loaded as the run's methods were given it (their recorded
    ``dataset_path``, ``images`` folder and the run's split); every distinct
    source is tried until each wanted image has a path.
    """
    from cobra_eval.datasets import load_dataset

    wanted = set(wanted)
    dataset_config = run.config.get("dataset") or {}
    split = dataset_config.get("split")
    sources = list(
        dict.fromkeys(
            (m.settings.get("dataset_path"), m.settings.get("images"))
            for m in methods
            if m.settings.get("dataset_path")
        )
    )
    found: dict[int, Path] = {}
    notes: list[str] = []
    for spec, images in sources:
        if wanted <= set(found):
            break
        try:
            dataset = load_dataset(spec, Path(images) if images else None, split)
        except CobraEvalError as exc:
            notes.append(f"Images: could not load the dataset {spec!r} ({exc}).")
            continue
        identity = dataset_config.get("identity")
        if identity and dataset.identity != identity:
            notes.append(
                f"Images: the annotation file {spec!r} has changed since the run; "
                "thumbnails are its current images for the same ids."
            )
        for sample in dataset.samples:
            if sample.image_id in wanted:
                found.setdefault(sample.image_id, sample.image_path)
    if not sources:
        notes.append("Images: the run records no dataset path; thumbnails are placeholders.")
    return found, notes


def thumbnail(path: Path, size: int = THUMBNAIL_PX) -> str | None:
    """A small JPEG of an image as a data URL, or None if it cannot be read."""
    from PIL import Image

    # no warnings.catch_warnings here: it is not thread-safe, and the size check below
    # refuses what the runner refuses before anything is decoded
    try:
        with Image.open(path) as img:
            if img.size[0] * img.size[1] > MAX_PIXELS:
                return None
            # JPEG decodes straight to a reduced scale: much faster than at full size
            img.draft("RGB", (size * 2, size * 2))
            small = img.convert("RGB")
        small.thumbnail((size, size))
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnails(paths: Mapping[int, Path], size: int = THUMBNAIL_PX) -> dict[int, str | None]:
    """Thumbnails of many images, decoded in threads (Pillow releases the GIL while decoding)."""
    if not paths:
        return {}
    ids = list(paths)
    workers = min(8, os.cpu_count() or 1, len(ids))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        made = list(pool.map(lambda i: thumbnail(paths[i], size), ids))
    return dict(zip(ids, made, strict=True))
