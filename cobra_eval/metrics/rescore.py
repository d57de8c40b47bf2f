"""Scoring stored or exported results again, without the model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cobra_eval.errors import CobraEvalError
from cobra_eval.metrics.corpus import CorpusScores, score_corpus
from cobra_eval.metrics.per_sample import PreparedScoring, SampleScorer
from cobra_eval.store.checkpoint_io import ResultRecord
from cobra_eval.store.claims import live_holders
from cobra_eval.store.repository import Store
from cobra_eval.store.scores import (
    ScoreUpdate,
    record_corpus_metrics,
    stored_scores,
    update_scores,
)


@dataclass
class Rescored:
    """Corpus scores of a set of results and each sample's scores (by image id)."""

    corpus: CorpusScores
    per_sample: dict[int, dict[str, float]] = field(default_factory=dict)
    #: each sample's pooled statistics, kept with stored results
    detail: dict[int, dict] = field(default_factory=dict)


def rescore(results: Sequence[ResultRecord], metrics: Sequence[str]) -> Rescored:
    """Score the successful results against their own references, as one batch evaluation.

    CIDEr-D's document frequencies come from the references of these results,
    which is what pycocoevalcap uses for the same set; corpus scores are pooled
    from the per-sample statistics exactly as it pools them.
    """
    scored = [r for r in results if r.status == "ok" and r.reference_captions]
    references = {r.image_id: r.reference_captions for r in scored}
    corpus = CorpusScores(n=len(scored))
    # METEOR's JVM gets ready (on the paraphrase entries these references can match)
    # and CIDEr-D's document frequencies are counted from one tokenization of them
    scorer = SampleScorer(references, metrics, prepared=PreparedScoring(metrics, references))
    try:
        values = scorer.score([(r.image_id, r.generated_caption) for r in scored])
        corpus.scores.update(scorer.corpus(values))
    finally:
        scorer.close()
    if scored and not scorer.available and scorer.groups:
        corpus.unavailable.update(
            {g: "Java is not installed (the COCO scorers need it)" for g in scorer.groups}
        )
    if "spice" in metrics:
        spice = score_corpus(
            {r.image_id: r.generated_caption for r in scored}, references, ("spice",)
        )
        corpus.scores.update(spice.scores)
        corpus.unavailable.update(spice.unavailable)
    return Rescored(
        corpus,
        {r.image_id: v.scores for r, v in zip(scored, values, strict=True)},
        {r.image_id: v.detail for r, v in zip(scored, values, strict=True)},
    )


def rescore_stored(store: Store, run_id: str, method: str, metrics: Sequence[str]) -> Rescored:
    """Rescore a stored method's results and store the scores (corpus scope 'rescore').

    Refused, changing nothing, while a worker runs the method: it keeps its samples'
    corpus statistics in memory, and its next checkpoints would pool them with
    these scores.
    """
    holders = live_holders(store, run_id, method)
    if holders:
        held = ", ".join(
            f"{worker} (claims until {until:%Y-%m-%d %H:%M:%S} UTC)"
            for worker, until in holders.items()
        )
        raise CobraEvalError(
            f"run {run_id}'s {method} is being run now by {held}; nothing was rescored. "
            "Score it again once it has stopped (a killed worker's claims lapse at that time)"
        )
    scored = rescore(list(store.results(run_id, method)), metrics)
    before = stored_scores(store, run_id, method)
    updates = {}
    for image_id, values in scored.per_sample.items():
        if not values:
            continue  # nothing could be scored: keep what is stored
        old = before.get(image_id)
        # metrics not asked for this time keep their stored values
        updates[image_id] = ScoreUpdate(
            metrics={**(old.metrics if old else {}), **values},
            scoring={**((old.scoring or {}) if old else {}), **scored.detail[image_id]},
        )
    update_scores(store, run_id, method, updates)
    record_corpus_metrics(
        store, run_id, method, scored.corpus.scores, n=scored.corpus.n, scope="rescore"
    )
    return scored
