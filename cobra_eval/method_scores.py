"""A method's scores during a run: per-sample scores kept for corpus pooling, rescoring.

The run loop hands finished batches here to be scored and asks for corpus
scores at each checkpoint and at the end; this module knows which stored scores
can serve the current planned set and which must be scored again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from cobra_eval.datasets import Sample, SampleReferences
from cobra_eval.methods import Method, PassOutput
from cobra_eval.metrics import METRIC_GROUPS, CorpusScores, score_corpus
from cobra_eval.metrics.corpus import spice_unavailable_reason
from cobra_eval.metrics.per_sample import (
    CorpusPart,
    DocumentFrequency,
    PreparedScoring,
    SampleScore,
    SampleScorer,
)
from cobra_eval.progress import Reporter
from cobra_eval.store import Store
from cobra_eval.store.checkpoint_io import ResultRecord
from cobra_eval.store.models import utcnow
from cobra_eval.store.scores import (
    ScoreUpdate,
    StoredScore,
    latest_corpus_metrics,
    note_rescored,
    record_corpus_metrics,
    save_document_frequency,
    stored_document_frequency,
    stored_scores,
    update_scores,
)

#: Stored results scored again per tokenizer call when a run's planned set changes.
RESCORE_CHUNK = 500
#: How long before its commit another worker's result may be stamped (its transaction's
#: length), for the checkpoints' look for new results; the final scores read them all.
LATE_COMMIT = timedelta(minutes=5)


class MethodScores:
    """Scores of one method's samples in this selection, as the run goes."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        method: Method,
        samples: dict[int, Sample],
        metrics: Sequence[str],
        scorer: SampleScorer,
        reporter: Reporter,
        worker: str,
    ):
        self.store, self.run_id, self.method, self.samples = store, run_id, method, samples
        self.metrics, self.scorer, self.reporter, self.worker = metrics, scorer, reporter, worker
        #: scores of the successful results in this selection: what corpus scores pool
        self.scored: dict[int, CorpusPart] = {}
        #: results other workers commit after this are picked up at each checkpoint
        self.loaded_at = utcnow()

    def add(self, image_id: int, score: SampleScore) -> None:
        """Keep what a scored sample adds to corpus scores (only that: one per sample)."""
        self.scored[image_id] = CorpusPart.of(score)

    def load(self) -> int:
        """Read the stored scores of this selection; score again what they cannot serve.

        Results scored against another planned set (the run was extended, so
        CIDEr-D's document frequencies changed), imported ones and ones scored
        with fewer metrics are rescored now, and the rescoring is recorded.
        Returns how many were rescored.
        """
        if not self.metrics:
            return 0  # nothing pools them (reading them took 0.26 s at 20,000 results)
        stored = stored_scores(self.store, self.run_id, self.method.name)
        stale = []
        # of those, scored without a metric asked for now (the others: another planned set)
        lacking = 0
        for image_id in self.samples:
            entry = stored.get(image_id)
            if entry is None:
                continue
            if self.scorer.available and not self.scorer.covers(entry.metrics, entry.scoring):
                stale.append(image_id)
                lacking += self.scorer.lacks(entry.metrics, entry.scoring)
            else:
                self.add(image_id, SampleScore(dict(entry.metrics), dict(entry.scoring or {})))
        rescored = self._rescore(stale, stored)
        if rescored:
            planned = self.scorer.document_frequency
            if planned is not None:
                note_rescored(self.store, self.run_id, planned.n_images, self.method.name, rescored)
            why = self._why(lacking, len(stale))
            name = self.method.name
            self.reporter.message(f"Rescored {rescored} earlier samples of {name} {why}")
        return rescored

    def _why(self, lacking: int, stale: int) -> str:
        """Why stale results were scored again: metrics lacking (lacking of them), or the plan."""
        replanned = (
            f"against the {self.scorer.planned} planned samples' references (CIDEr-D "
            "document frequencies)"
        )
        if not lacking:
            return replanned
        without = f"scored without some of {', '.join(self.metrics)}"
        return f"({without})" if lacking == stale else f"({without}, or {replanned})"

    def _rescore(self, stale: Sequence[int], stored: Mapping[int, StoredScore]) -> int:
        """Score these stored results again for this run's metrics; store and pool them."""
        if not stale:
            return 0
        wanted = set(stale)
        # a few (another worker's latest) are read by id; many, in one pass over all
        few = wanted if len(wanted) <= RESCORE_CHUNK else None
        results = [r for r in self.store.results(self.run_id, self.method.name, only=few)
                   if r.image_id in wanted]  # fmt: skip
        updates = {}
        for start in range(0, len(results), RESCORE_CHUNK):
            chunk = results[start : start + RESCORE_CHUNK]
            passes = [
                [PassOutput.model_validate(p) for p in r.metadata.get("passes") or []]
                for r in chunk
            ]
            ids = [r.image_id for r in chunk]
            pass_scores = self.score_passes(ids, passes)
            captions = [r.generated_caption for r in chunk]
            finals = self.final_scores(ids, captions, passes, pass_scores)
            for result, done, score in zip(chunk, passes, finals, strict=True):
                # metrics not asked for this time keep their stored values
                old = stored[result.image_id]
                merged = SampleScore(
                    {**old.metrics, **score.scores}, {**(old.scoring or {}), **score.detail}
                )
                updates[result.image_id] = ScoreUpdate(
                    metrics=merged.scores,
                    scoring=merged.detail,
                    pass_metrics=[dict(p.metrics) for p in done],
                    metadata=self.refreshed_metadata(result, done),
                )
                self.add(result.image_id, merged)
        update_scores(self.store, self.run_id, self.method.name, updates)
        return len(updates)

    def refreshed_metadata(
        self, result: ResultRecord, passes: Sequence[PassOutput]
    ) -> dict[str, Any]:
        """The result's metadata with its passes' new metrics (and what the method derives)."""
        metadata = dict(result.metadata)
        if not passes:
            return metadata
        old = metadata.get("passes") or []
        metadata["passes"] = [{**o, "metrics": dict(p.metrics)}
                              for o, p in zip(old, passes, strict=True)]  # fmt: skip
        redone = self.method.finalize(passes)
        if redone.generated_caption == result.generated_caption:
            metadata.update(redone.metadata)
        return metadata

    def corpus(self, scope: str) -> CorpusScores | None:
        """Corpus scores pooled from the successful results so far; stored under scope."""
        if not self.metrics or not self.scorer.available:
            return None
        self.add_others()
        # in plan order: corpus means are summed in that order
        samples = [self.scored[i] for i in self.samples if i in self.scored]
        if not samples:
            return None
        scores = self.scorer.corpus(samples)
        record_corpus_metrics(
            self.store, self.run_id, self.method.name, scores, n=len(samples), scope=scope
        )
        return CorpusScores(n=len(samples), scores=scores)

    def add_others(self, *, complete: bool = False) -> None:
        """Scores of results other workers committed since this worker loaded the stored ones.

        created_at is stamped before a commit: a checkpoint looks back LATE_COMMIT
        before loaded_at; complete reads every other worker's results (what the
        final scores need, whatever a transaction's length).
        """
        if len(self.scored) >= len(self.samples):
            return
        since = None if complete else self.loaded_at - LATE_COMMIT
        others = stored_scores(self.store, self.run_id, self.method.name,
                               since=since, other_than=self.worker)  # fmt: skip
        # committed without what this worker pools (a worker with fewer metrics or none, an
        # import): scored here, as load scores those committed before it started; CIDEr-D
        # scored against another planned set (a worker that extended the run) is left alone
        stale = []
        for image_id, entry in others.items():
            if image_id not in self.samples or image_id in self.scored:
                continue
            if self.scorer.covers(entry.metrics, entry.scoring):
                self.add(image_id, SampleScore(dict(entry.metrics), dict(entry.scoring or {})))
            elif self.scorer.lacks(entry.metrics, entry.scoring):
                stale.append(image_id)
        scored = self._rescore(stale, others)
        if scored:
            self.reporter.message(
                f"Scored {scored} samples of {self.method.name} that other workers "
                f"committed without {', '.join(self.metrics)}"
            )

    def final(self, *, reuse: bool) -> CorpusScores | None:
        """Corpus metrics of the method's successful results in this selection.

        With reuse (nothing new was scored), stored scores of the same samples are
        returned instead of starting the Java scorers again.
        """
        if not self.metrics:
            return None
        if self.scorer.available:
            self.add_others(complete=True)
        reused = self.stored_final(len(self.scored)) if reuse else None
        if reused is not None:
            return reused
        out = self.corpus("final") or CorpusScores(n=len(self.scored))
        if not self.scorer.available:
            out.unavailable.update(
                {g: "Java is not installed (the COCO scorers need it)"
                 for g in self.metrics if g != "spice"}
            )  # fmt: skip
        if "spice" in self.metrics:
            spice = self.spice()
            out.scores.update(spice.scores)
            out.unavailable.update(spice.unavailable)
        return out

    def spice(self) -> CorpusScores:
        """SPICE has no per-sample statistics here: the official scorer runs at the end."""
        candidates, references = {}, {}
        for result in self.store.results(self.run_id, self.method.name):
            if result.status == "ok" and result.image_id in self.samples:
                candidates[result.image_id] = result.generated_caption
                references[result.image_id] = result.reference_captions
        spice = score_corpus(candidates, references, ("spice",))
        record_corpus_metrics(
            self.store, self.run_id, self.method.name, spice.scores, n=spice.n, scope="final"
        )
        return spice

    def stored_final(self, n_now: int) -> CorpusScores | None:
        """The stored final scores, if they cover the same samples and every metric asked for."""
        stored = latest_corpus_metrics(self.store, self.run_id, self.method.name, scope="final")
        if stored is None:
            return None
        keys = [k for g in self.metrics if g != "spice" for k in METRIC_GROUPS[g]]
        if stored.n_samples != n_now or any(key not in stored.scores for key in keys):
            return None
        out = CorpusScores(n=n_now, scores={key: stored.scores[key] for key in keys})
        if "spice" in self.metrics:
            if "SPICE" in stored.scores:
                out.scores["SPICE"] = stored.scores["SPICE"]
            else:
                reason = spice_unavailable_reason()
                if reason is None:
                    return None  # SPICE became available: score again
                out.unavailable["spice"] = reason
        return out

    def score_passes(
        self, image_ids: Sequence[int], passes: Sequence[Sequence[PassOutput]]
    ) -> list[list[SampleScore | None]]:
        """Score every non-empty pass caption in one tokenizer call, setting its metrics."""
        items = [(i, p.caption) for i, done in zip(image_ids, passes, strict=True)
                 for p in done if p.caption]  # fmt: skip
        scored = iter(self.scorer.score(items))
        out: list[list[SampleScore | None]] = []
        for done in passes:
            row: list[SampleScore | None] = []
            for p in done:
                score = next(scored) if p.caption else None
                if score is not None:
                    p.metrics = {**p.metrics, **score.scores}
                row.append(score)
            out.append(row)
        return out

    def final_scores(
        self,
        image_ids: Sequence[int],
        captions: Sequence[str],
        passes: Sequence[Sequence[PassOutput]],
        pass_scores: Sequence[Sequence[SampleScore | None]],
    ) -> list[SampleScore]:
        """Each final caption's scores: those of the pass it came from, else scored now."""
        finals: list[SampleScore | None] = []
        for caption, done, scores in zip(captions, passes, pass_scores, strict=True):
            match = [s for p, s in zip(done, scores, strict=True) if s and p.caption == caption]
            finals.append(match[-1] if match else None)
        missing = [k for k, score in enumerate(finals) if score is None]
        fresh = iter(self.scorer.score([(image_ids[k], captions[k]) for k in missing]))
        return [score if score is not None else next(fresh) for score in finals]


def open_scorer(
    store: Store,
    run_id: str,
    selected: Mapping[int, Sample],
    metrics: Sequence[str],
    prepared: PreparedScoring | None = None,
) -> SampleScorer:
    """A scorer whose CIDEr-D document frequencies are those stored for this planned set.

    The first invocation that plans the set computes them and stores them as it
    first scores; later ones (resume, other workers) read them back, so every sample
    of the set is scored against the same frequencies (a worker that starts before
    they are stored counts the same ones). prepared: as SampleScorer's.
    """
    references = SampleReferences(selected)
    # only CIDEr-D needs them (and counting the planned references takes 20-40 ms at 100k)
    stored = (
        stored_document_frequency(store, run_id, len(references)) if "cider" in metrics else None
    )
    known = DocumentFrequency.from_bytes(stored) if stored is not None else None

    def save(df: DocumentFrequency) -> None:
        save_document_frequency(
            store, run_id, n_images=df.n_images, n_ngrams=len(df.counts), data=df.to_bytes(),
            sha256=df.sha256,
        )  # fmt: skip

    return SampleScorer(
        references, metrics, document_frequency=known, prepared=prepared, on_counted=save
    )
