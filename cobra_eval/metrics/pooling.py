"""Corpus scores from per-sample statistics, with pycocoevalcap's arithmetic.

Corpus BLEU is not a mean of per-image BLEU: ``BleuScorer.compute_score`` sums
every image's clipped n-gram matches, guesses and lengths, then takes the
geometric mean and brevity penalty once. ROUGE-L and CIDEr-D are plain means
(``np.mean`` over the images in evaluation order).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def pooled_bleu(comps: Sequence[Mapping[str, Any]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n from per-image {testlen, reflen (closest), guess, correct}."""
    small, tiny = 1e-9, 1e-15  # BleuScorer's constants, for identical rounding
    testlen = sum(int(c["testlen"]) for c in comps)
    reflen = sum(c["reflen"] for c in comps)
    guess = [sum(int(c["guess"][k]) for c in comps) for k in range(n)]
    correct = [sum(int(c["correct"][k]) for c in comps) for k in range(n)]
    bleus, bleu = [], 1.0
    for k in range(n):
        bleu *= float(correct[k] + tiny) / (guess[k] + small)
        bleus.append(bleu ** (1.0 / (k + 1)))
    ratio = (testlen + tiny) / (reflen + small)
    if ratio < 1:
        bleus = [b * math.exp(1 - 1 / ratio) for b in bleus]
    return [float(b) for b in bleus]


def mean(values: Sequence[float]) -> float:
    """The mean as pycocoevalcap takes it (numpy's pairwise sum), so the last bits agree."""
    return float(np.mean(np.array(values)))
