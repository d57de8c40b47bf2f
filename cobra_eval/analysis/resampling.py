"""Resampling for bootstrap intervals: which images each resample draws, and corpus BLEU
of many resamples at once with pycocoevalcap's arithmetic.

A chunk of resamples is held as how many times each draws each image, so summing
per-image statistics over a resample is one matrix product: the same integers as
indexing with the draw and summing (exact in float64), without an
(n_resamples, n, columns) array. numpy draws a chunked stream exactly as one
long draw, so the chunk size never changes the intervals.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

#: Cells (resamples x images) of one chunk of weights: bounds memory at any size.
CHUNK_CELLS = 2_000_000
#: Columns of the BLEU statistics: testlen, reflen, guess[0..3], correct[0..3].
BLEU_COLUMNS = 10


def resample_weights(n: int, bootstrap: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """(index of the first resample, weights) chunks: weights[r, i] = draws of image i."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(bootstrap, CHUNK_CELLS // max(n, 1)))
    for first in range(0, bootstrap, chunk):
        size = min(chunk, bootstrap - first)
        draws = rng.integers(0, n, size=(size, n))
        offsets = (draws + n * np.arange(size)[:, None]).ravel()
        weights = np.bincount(offsets, minlength=size * n).reshape(size, n)
        yield first, weights.astype(np.float64)


def bleu_count_matrix(comps: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Per-image BLEU statistics as an (n, 10) int64 array.

    Columns: testlen, reflen (closest), guess[0..3], correct[0..3]; rows sum to the
    totals ``pooled_bleu`` sums.
    """
    out = np.zeros((len(comps), BLEU_COLUMNS), dtype=np.int64)
    for row, c in enumerate(comps):
        out[row] = [c["testlen"], c["reflen"], *c["guess"][:4], *c["correct"][:4]]
    return out


def pooled_bleu_rows(totals: np.ndarray) -> np.ndarray:
    """BLEU-1..4 of each row of summed count columns: ``pooled_bleu``'s arithmetic, row-wise.

    Sums and ratios are numpy (IEEE basic operations, bit-identical to Python's);
    the powers and the brevity penalty go through Python's libm calls, because
    numpy's SIMD pow/exp differ from them in the last bits on some CPUs and the
    result must equal ``pooled_bleu`` exactly.
    """
    small, tiny = 1e-9, 1e-15  # BleuScorer's constants, as in pooled_bleu
    totals = np.asarray(totals, dtype=np.float64).reshape(-1, BLEU_COLUMNS)
    guess, correct = totals[:, 2:6], totals[:, 6:10]
    products = np.cumprod((correct + tiny) / (guess + small), axis=1)
    bleus = np.array(
        [[math.pow(p, 1.0 / (k + 1)) for k, p in enumerate(row)] for row in products.tolist()],
        dtype=np.float64,
    ).reshape(-1, 4)
    ratio = (totals[:, 0] + tiny) / (totals[:, 1] + small)
    short = ratio < 1
    if short.any():
        penalty = np.array([math.exp(x) for x in (1 - 1 / ratio[short]).tolist()])
        bleus[short] = bleus[short] * penalty[:, None]
    return bleus


def bleu_comps(scoring: Any) -> dict[str, Any] | None:
    """A sample's stored BLEU statistics, if complete and integral (as 'closest' gives them)."""
    comps = scoring.get("bleu") if isinstance(scoring, dict) else None
    if not isinstance(comps, dict):
        return None
    try:
        values = [comps["testlen"], comps["reflen"], *comps["guess"], *comps["correct"]]
    except (KeyError, TypeError):
        return None
    if len(values) != BLEU_COLUMNS or not all(integral(v) for v in values):
        return None
    return comps


def integral(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or value.is_integer()
