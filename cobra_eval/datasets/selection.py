"""Choosing a run's samples and checking them before any generation.

The order is the dataset's own, or with a seed a permutation that depends only
on the seed and the image ids (a hash, not a shuffle): raising --num_samples
later takes the next samples of the same order, on any Python version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from cobra_eval.datasets.base import Dataset, Sample
from cobra_eval.errors import DatasetError
from cobra_eval.text import has_lone_surrogate

#: Offenders named per kind of problem in a report.
SHOWN = 5
MISSING_IMAGE = "missing image files"
NO_REFERENCES = "images without reference captions"
BROKEN_REFERENCES = "images whose reference captions hold a lone UTF-16 surrogate"


@dataclass
class Selection:
    """The samples a run plans, and what was left out with --skip_missing."""

    samples: list[Sample]
    selection: dict[str, Any]
    skipped: dict[str, list[int]] = field(default_factory=dict)

    def skipped_record(self) -> dict[str, Any]:
        """What was skipped, as recorded with the run (counts and the first ids)."""
        return {
            kind: {"count": len(ids), "first": ids[:SHOWN]} for kind, ids in self.skipped.items()
        }


def order(dataset: Dataset, seed: int | None) -> list[Sample]:
    """The dataset's samples in planning order."""
    if seed is None:
        return list(dataset.samples)
    return sorted(
        dataset.samples, key=lambda s: hashlib.sha256(f"{seed}:{s.image_id}".encode()).digest()
    )


def select_samples(
    dataset: Dataset,
    num_samples: int | None,
    *,
    seed: int | None = None,
    skip_missing: bool = False,
) -> Selection:
    """The first num_samples usable samples in planning order, or a refusal listing the problems.

    A sample is unusable when its image file is missing, it has no reference
    caption, or one of them cannot be encoded (a lone surrogate: no scorer reads
    it). Without skip_missing any unusable sample among those selected stops the
    run before generation; with it they are passed over and recorded.
    Duplicate image ids always stop it: which entry is meant cannot be guessed.
    """
    where = f"{dataset.name}{f' (split {dataset.split})' if dataset.split else ''}"
    if dataset.duplicates:
        raise DatasetError(
            f"dataset check failed for {where}: {len(dataset.duplicates)} image ids appear "
            f"more than once (e.g. {_ids(dataset.duplicates)}); fix the annotation file"
        )
    chosen: list[Sample] = []
    problems: dict[str, list[tuple[int, str]]] = {
        MISSING_IMAGE: [],
        NO_REFERENCES: [],
        BROKEN_REFERENCES: [],
    }
    for sample in order(dataset, seed):
        if num_samples is not None and len(chosen) >= num_samples:
            break
        problem = _problem(sample)
        if problem is None:
            chosen.append(sample)
        else:
            problems[problem].append((sample.image_id, str(sample.image_path)))
    found = {kind: items for kind, items in problems.items() if items}
    if found and not skip_missing:
        total = sum(len(items) for items in found.values())
        lines = [
            f"dataset check failed for {where}: {total} of the selected samples cannot be used"
        ]
        for kind, items in found.items():
            shown = ", ".join(
                f"{i}: {path}" if kind == MISSING_IMAGE else str(i) for i, path in items[:SHOWN]
            )
            more = ", ..." if len(items) > SHOWN else ""
            lines.append(f"  {kind}: {len(items)} (e.g. {shown}{more})")
        lines.append("Fix them, or pass --skip_missing to plan without them (recorded in the run).")
        raise DatasetError("\n".join(lines))
    if num_samples is not None and len(chosen) < num_samples:
        skipped = sum(len(items) for items in found.values())
        raise DatasetError(
            f"--num_samples {num_samples} is larger than the dataset {where} "
            f"({len(chosen)} usable samples{f', {skipped} skipped' if skipped else ''})"
        )
    selection: dict[str, Any] = {"selection": "first_n" if seed is None else f"seeded:{seed}"}
    if skip_missing:
        selection["skip_missing"] = True
    return Selection(
        chosen, selection, {kind: [i for i, _ in items] for kind, items in found.items()}
    )


def _problem(sample: Sample) -> str | None:
    if not sample.references:
        return NO_REFERENCES
    if any(has_lone_surrogate(reference) for reference in sample.references):
        return BROKEN_REFERENCES
    if not sample.image_path.is_file():
        return MISSING_IMAGE
    return None


def _ids(ids: tuple[int, ...]) -> str:
    return ", ".join(str(i) for i in ids[:SHOWN]) + (", ..." if len(ids) > SHOWN else "")
