"""Samples and datasets as the runner sees them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cobra_eval.errors import DatasetError


@dataclass(frozen=True)
class Sample:
    """One image and its reference captions."""

    image_id: int
    image_path: Path
    references: tuple[str, ...]


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset in its stable order."""

    name: str
    identity: str
    split: str | None
    samples: tuple[Sample, ...]
    details: dict[str, Any] = field(default_factory=dict)

    def identity_config(self) -> dict[str, Any]:
        """The dataset's part of the semantic config."""
        return {"identity": self.identity, "split": self.split, "selection": "first_n"}

    def select(self, num_samples: int | None) -> list[Sample]:
        """The first num_samples samples (all when None), refusing more than there are."""
        if num_samples is None:
            return list(self.samples)
        if num_samples > len(self.samples):
            raise DatasetError(
                f"--num_samples {num_samples} is larger than the dataset {self.name} "
                f"({len(self.samples)} samples{f', split {self.split}' if self.split else ''})"
            )
        return list(self.samples[:num_samples])
