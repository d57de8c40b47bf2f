"""Corpus scores of one method with bootstrap confidence intervals over its images.

A corpus score's uncertainty is that of the image set it was computed on, so each
bootstrap replicate resamples images with replacement and pools them again the
way the official scorers do: BLEU sums the replicate's n-gram counts and lengths
and applies pycocoevalcap's formula once (it is not a mean of per-image BLEU);
ROUGE-L and CIDEr-D are means of the per-image scores. METEOR's pooling needs the
Java scorer and SPICE has no per-image statistics here, so neither gets an interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cobra_eval.analysis.resampling import (
    bleu_comps,
    bleu_count_matrix,
    pooled_bleu_rows,
    resample_weights,
)
from cobra_eval.metrics import METRIC_GROUPS
from cobra_eval.metrics.pooling import mean, pooled_bleu
from cobra_eval.store.scores import StoredScore

#: Metrics whose corpus score is a plain mean of the per-image scores.
MEAN_METRICS = ("ROUGE_L", "CIDEr")
#: Every official metric key, in the order tables and plots show them.
METRIC_ORDER = tuple(key for keys in METRIC_GROUPS.values() for key in keys)


@dataclass(frozen=True)
class CorpusInterval:
    """A corpus score of one method and its bootstrap percentile interval."""

    metric: str
    #: the score pooled from the stored per-image statistics
    value: float
    #: bounds of the interval; None when bootstrapping was off or the metric has no statistics
    ci_low: float | None
    ci_high: float | None
    #: images the score pools
    n: int


def corpus_intervals(
    scores: Mapping[int, StoredScore],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, CorpusInterval]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of these results with percentile intervals, by metric.

    Only metrics some result has statistics for appear. ``bootstrap=0`` gives the
    scores without intervals. The same seed gives the same intervals.
    """
    ids = sorted(scores)  # a fixed order: the seed alone decides the replicates
    out: dict[str, CorpusInterval] = {}
    comps = [bleu_comps(scores[i].scoring) for i in ids]
    bleu = [c for c in comps if c is not None]
    if bleu:
        # columns: testlen, reflen, guess 1..4, correct 1..4 (pooled_bleu's inputs)
        matrix = bleu_count_matrix(bleu).astype(np.float64)
        point = pooled_bleu(bleu)
        replicates = pooled_bleu_rows(_replicate_sums(matrix, bootstrap, seed))
        for k, key in enumerate(METRIC_GROUPS["bleu"]):
            out[key] = _interval(key, point[k], replicates[:, k], len(bleu), level)
    for key in MEAN_METRICS:
        values = [_number(scores[i].metrics.get(key)) for i in ids]
        present = [v for v in values if v is not None]
        if not present:
            continue
        sums = _replicate_sums(np.array(present, dtype=float).reshape(-1, 1), bootstrap, seed)
        out[key] = _interval(key, mean(present), sums[:, 0] / len(present), len(present), level)
    return {key: out[key] for key in METRIC_ORDER if key in out}


def _interval(
    metric: str, value: float, replicates: np.ndarray, n: int, level: float
) -> CorpusInterval:
    if replicates.size == 0:
        return CorpusInterval(metric, value, None, None, n)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return CorpusInterval(metric, value, float(low), float(high), n)


def _replicate_sums(matrix: np.ndarray, bootstrap: int, seed: int) -> np.ndarray:
    """Column sums of `bootstrap` resamples (with replacement) of the matrix's rows."""
    if bootstrap <= 0 or matrix.shape[0] == 0:
        return np.zeros((0, matrix.shape[1]))
    return np.vstack([w @ matrix for _, w in resample_weights(matrix.shape[0], bootstrap, seed)])


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
