"""Scoring stored or exported results again, without the model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cobra_eval.metrics.corpus import CorpusScores, score_corpus
from cobra_eval.metrics.per_sample import SampleScorer
from cobra_eval.store.checkpoint_io import ResultRecord


@dataclass
class Rescored:
    """Corpus scores of a set of results and each sample's scores (by image id)."""

    corpus: CorpusScores
    per_sample: dict[int, dict[str, float]] = field(default_factory=dict)


def rescore(results: Sequence[ResultRecord], metrics: Sequence[str]) -> Rescored:
    """Score the successful results against their own references.

    CIDEr-D's document frequencies come from the references of these results,
    which is what a batch evaluation of the same set uses.
    """
    scored = [r for r in results if r.status == "ok" and r.reference_captions]
    candidates = {r.image_id: r.generated_caption for r in scored}
    references = {r.image_id: r.reference_captions for r in scored}
    corpus = score_corpus(candidates, references, metrics)
    scorer = SampleScorer(references, metrics)
    try:
        values = scorer.score([(r.image_id, r.generated_caption) for r in scored])
    finally:
        scorer.close()
    return Rescored(corpus, {r.image_id: v for r, v in zip(scored, values, strict=True)})
