"""Per-sample COCO caption scores as samples land, and corpus scores pooled from them.

BLEU, METEOR and ROUGE-L of one image depend on that image alone, so scoring it
alone gives pycocoevalcap's per-image value. CIDEr-D does not: its document
frequencies and log(N) come from the references of the evaluated set. Those are
the planned samples' references, known before any generation, so they are fixed
up front and every sample scored alone gets exactly its batch-evaluation value.

Each scored sample also keeps what its corpus scores are made of (BLEU's n-gram
counts and lengths, METEOR's statistics line), so corpus scores at a checkpoint
are pooled exactly as pycocoevalcap pools them, without scoring anything again.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import hashlib
import json
import math
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from cobra_eval.metrics import coco_scorers
from cobra_eval.metrics.corpus import METRIC_GROUPS, ptb_tokenize, sanitize
from cobra_eval.metrics.meteor import MeteorProcess, stats_counts
from cobra_eval.metrics.pooling import mean, pooled_bleu

#: Planned images whose references are tokenized per request when counting document frequencies.
REFERENCE_CHUNK = 4_000
#: Planned images whose references METEOR rehearses on before the first sample (about
#: 0.6 CPU-s of its JVM, taken off a run's generation while the model loads).
REHEARSAL_IMAGES = 100
#: Metric groups that can be scored per sample (SPICE is corpus-only here).
PER_SAMPLE_GROUPS = ("bleu", "meteor", "rouge", "cider")


@dataclass
class SampleScore:
    """One caption's scores and the statistics its corpus scores are pooled from."""

    scores: dict[str, float] = field(default_factory=dict)
    #: {"bleu": {testlen, reflen, guess, correct}, "meteor": stats line, "cider_planned": N}
    detail: dict[str, Any] = field(default_factory=dict)


class CorpusPart(NamedTuple):
    """What one sample adds to corpus scores, kept small: a run holds one per sample.

    BLEU's (testlen, closest reflen, guess x4, correct x4), METEOR's statistics
    line (and its counts, summed at each checkpoint), and the ROUGE-L and
    CIDEr-D values the corpus means are taken over.
    """

    bleu: tuple[int, ...] | None
    meteor: str | None
    rouge: float | None
    cider: float | None
    meteor_counts: bytes | None = None

    @classmethod
    def of(cls, score: SampleScore) -> CorpusPart:
        """The corpus part of a sample's scores and statistics."""
        comps = score.detail.get("bleu")
        bleu = (
            (int(comps["testlen"]), int(comps["reflen"]), *map(int, comps["guess"]),
             *map(int, comps["correct"]))
            if comps
            else None
        )  # fmt: skip
        meteor = score.detail.get("meteor")
        return cls(bleu, meteor, score.scores.get("ROUGE_L"), score.scores.get("CIDEr"),
                   stats_counts(meteor) if meteor else None)  # fmt: skip


def _bleu_comps(bleu: tuple[int, ...] | None) -> dict[str, Any]:
    if bleu is None:
        raise ValueError("a sample without BLEU statistics cannot be pooled")
    n = (len(bleu) - 2) // 2
    return {"testlen": bleu[0], "reflen": bleu[1], "guess": bleu[2 : 2 + n],
            "correct": bleu[2 + n :]}  # fmt: skip


def _bleu_totals(parts: Sequence[CorpusPart]) -> dict[str, Any]:
    """The parts' BLEU statistics summed, as one image's: pooled_bleu's sums, made by numpy.

    Counts are integers, so the sums are exact and pooled_bleu of the one total
    is pooled_bleu of the parts (a checkpoint of a 100,000-sample run pools in
    tens of milliseconds instead of hundreds).
    """
    if any(p.bleu is None for p in parts):
        raise ValueError("a sample without BLEU statistics cannot be pooled")
    totals = np.array([p.bleu for p in parts], dtype=np.int64).sum(axis=0)
    return _bleu_comps(tuple(totals.tolist()))


@dataclass(frozen=True)
class DocumentFrequency:
    """CIDEr-D's document frequencies of a planned set, as stored with the run."""

    n_images: int
    counts: dict[tuple[str, ...], float]

    def to_bytes(self) -> bytes:
        """Deterministic gzip'd JSON: [["n gram", count], ...] sorted."""
        rows = sorted([" ".join(ngram), int(count)] for ngram, count in self.counts.items())
        text = json.dumps({"n_images": self.n_images, "df": rows}, separators=(",", ":"))
        return gzip.compress(text.encode(), mtime=0)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def of(cls, n_images: int, counts: Counter[tuple[str, ...]]) -> DocumentFrequency:
        """From the number of images each n-gram occurs in (counted_texts' counts)."""
        return cls(n_images, {ngram: float(n) for ngram, n in counts.items()})

    @classmethod
    def from_bytes(cls, data: bytes) -> DocumentFrequency:
        loaded = json.loads(gzip.decompress(data))
        counts = {tuple(ngram.split(" ")): float(count) for ngram, count in loaded["df"]}
        return cls(int(loaded["n_images"]), counts)


class PreparedScoring:
    """What scoring a planned set needs before its first sample, made in the background
    (while the model loads) from one tokenization of its references: METEOR's JVM on
    the paraphrase entries they can match, and CIDEr-D's document frequencies."""

    def __init__(self, metrics: Sequence[str], references: Mapping[int, Sequence[str]] | None):
        """references: by image id, every reference that will be scored (None: the JVM
        starts on the whole paraphrase table, and frequencies are left to the scorer)."""
        self.meteor = MeteorProcess()
        self._counted: Future[DocumentFrequency | None] | None = None
        #: done once the tokenized references are all read, or never will be
        self._read: Future[Any] | None = None
        if shutil.which("java") is None:
            return
        if references is None:
            if "meteor" in metrics:
                self.meteor.warm_up()
            return
        if "cider" in metrics:
            self._counted = Future()
        #: the first planned images' references, for METEOR's rehearsal
        self._rehearsal: list[list[str]] = []
        texts = self._texts(references)
        if "meteor" in metrics:
            self._read = self.meteor.prepare(lambda: texts, self._rehearsal_pairs)
        if self._read is None and self._counted is not None:
            # no METEOR cut reads them: a thread of our own does, for the frequencies
            self._read = Future()
            threading.Thread(
                target=_drain, args=(texts, self._read), name="cider-frequencies", daemon=True
            ).start()

    def _texts(self, references: Mapping[int, Sequence[str]]) -> Iterator[str]:
        """Every reference as METEOR gets it; sets CIDEr-D's document frequencies once the
        last one is read."""
        counts: Counter[coco_scorers.Ngram] = Counter()
        for refs in counted_texts(references, counts if self._counted is not None else None):
            if len(self._rehearsal) < REHEARSAL_IMAGES:
                self._rehearsal.append(refs)
            yield from refs
        if self._counted is not None:
            self._counted.set_result(DocumentFrequency.of(len(references), counts))

    def _rehearsal_pairs(self) -> list[tuple[str, list[str]]]:
        """Each first image's first reference against its others: text like a run's."""
        return [(refs[0], refs[1:]) for refs in self._rehearsal if len(refs) > 1]

    def document_frequency(self) -> DocumentFrequency | None:
        """CIDEr-D's document frequencies of the references, waiting for them; None if they
        were not asked for or could not be counted (a scorer counts them itself)."""
        if self._counted is None or self._read is None:
            return None
        wait([self._counted, self._read], return_when=FIRST_COMPLETED)
        return self._counted.result() if self._counted.done() else None

    def close(self) -> None:
        """Stop the METEOR JVM, if one was started."""
        self.meteor.close()


def _drain(texts: Iterator[str], done: Future[Any]) -> None:
    # a failure leaves the frequencies uncounted: the scorer counts them and says what failed
    try:
        with contextlib.suppress(Exception):
            collections.deque(texts, maxlen=0)
    finally:
        done.set_result(None)


def counted_texts(
    references: Mapping[int, Sequence[str]], counts: Counter[coco_scorers.Ngram] | None
) -> Iterator[list[str]]:
    """Each image's references as a scorer tokenizes them, a chunk of images per tokenizer
    request; each image's distinct n-grams are added to counts (when given) on the way."""
    ids = list(references)
    for start in range(0, len(ids), REFERENCE_CHUNK):
        chunk = {i: references[i] for i in ids[start : start + REFERENCE_CHUNK]}
        for refs in ptb_tokenize(chunk).values():
            if counts is not None:
                counts.update(coco_scorers.image_ngrams([coco_scorers.cook(r) for r in refs]))
            yield refs


class SampleScorer:
    """Scores (image, caption) pairs against the planned samples' references."""

    def __init__(
        self,
        references: Mapping[int, Sequence[str]],
        metrics: Sequence[str],
        *,
        document_frequency: DocumentFrequency | None = None,
        prepared: PreparedScoring | None = None,
        on_counted: Callable[[DocumentFrequency], None] | None = None,
    ):
        """references: by image id, of the images that have some (kept, not copied);
        prepared: what PreparedScoring started for these references (its METEOR JVM,
        and its document frequencies unless some are given); on_counted: told the
        document frequencies when they were not given, once counted."""
        self.groups = [g for g in metrics if g in PER_SAMPLE_GROUPS]
        self.available = bool(self.groups) and shutil.which("java") is not None
        # raw references, tokenized with each batch's captions: holding every planned
        # image's tokenized references would cost ~80 MB at 100k images (and the raw
        # ones are looked up in the samples, not copied)
        self.references: Mapping[int, Sequence[str]] = {}
        self.meteor = prepared.meteor if prepared is not None else MeteorProcess()
        self._frequencies = document_frequency
        self._prepared, self._on_counted = prepared, on_counted
        self._cider: coco_scorers.CiderD | None = None
        self._cider_lock = threading.Lock()
        if self.available:
            self.references = references

    @property
    def document_frequency(self) -> DocumentFrequency | None:
        """CIDEr-D's document frequencies of the planned set (None without CIDEr-D).

        Counted on first need, not up front: the first batch generates while they
        are counted in the background (PreparedScoring).
        """
        cider = self._cider_scorer()
        return self._frequencies if cider is not None else None

    def _cider_scorer(self) -> coco_scorers.CiderD | None:
        if self._cider is not None or "cider" not in self.groups or not self.available:
            return self._cider
        with self._cider_lock:
            if self._cider is None:
                frequencies = self._frequencies
                if frequencies is None and self._prepared is not None:
                    frequencies = self._prepared.document_frequency()
                if frequencies is None:
                    counts: Counter[coco_scorers.Ngram] = Counter()
                    collections.deque(counted_texts(self.references, counts), maxlen=0)
                    frequencies = DocumentFrequency.of(len(self.references), counts)
                if self._frequencies is None and self._on_counted is not None:
                    self._on_counted(frequencies)
                self._frequencies = frequencies
                # the planned set's df and N (not this call's): every sample gets its batch value
                self._cider = coco_scorers.CiderD(frequencies.counts, frequencies.n_images)
        return self._cider

    @property
    def planned(self) -> int:
        """N of CIDEr-D's log(N): the planned samples that have references."""
        return len(self.references)

    def score(self, items: Sequence[tuple[int, str]]) -> list[SampleScore]:
        """Scores of every (image_id, caption); empty for a pair that cannot be scored."""
        if not self.available or not items:
            return [SampleScore() for _ in items]
        scorable = [k for k, (image_id, _) in enumerate(items) if image_id in self.references]
        # captions and their references in one tokenizer call (-preserveLines: each line alone)
        request: dict[tuple[str, int], Sequence[str]] = {
            ("caption", k): [sanitize(text)] for k, (_, text) in enumerate(items)
        }
        request.update({("refs", k): self.references[items[k][0]] for k in scorable})
        tokenized = ptb_tokenize(request)
        texts = {k: tokenized["caption", k][0] for k in range(len(items))}
        refs = {k: tokenized["refs", k] for k in scorable}
        meteor: dict[int, tuple[str, float]] = {}
        if "meteor" in self.groups and scorable:
            # one round trip for the batch's statistics lines and one EVAL for their scores
            pairs = [(texts[k], refs[k]) for k in scorable]
            stats = self.meteor.stats_many(pairs)
            _, values = self.meteor.evaluate(stats)
            meteor = dict(zip(scorable, zip(stats, values, strict=True), strict=True))
        out = []
        for k, (image_id, _) in enumerate(items):
            scored = self._one(image_id, texts[k], refs[k], meteor.get(k)) if k in refs else None
            out.append(scored or SampleScore())
        return out

    def _one(
        self, image_id: int, hypo: str, refs: list[str], meteor: tuple[str, float] | None
    ) -> SampleScore:
        out = SampleScore()
        scores, detail = out.scores, out.detail
        cider = self._cider_scorer()
        if "bleu" in self.groups or cider is not None:
            hyp = coco_scorers.cook(hypo)
            cooked = [coco_scorers.cook(r) for r in refs]
        if "bleu" in self.groups:
            comps = coco_scorers.bleu_comps(hyp, cooked)
            bleu = coco_scorers.bleu_of_comps(comps)
            scores.update(zip(METRIC_GROUPS["bleu"], bleu, strict=True))
            # corpus BLEU is pooled from these (testlen, closest reflen, guess, correct)
            detail["bleu"] = comps
        if meteor is not None:
            detail["meteor"], scores["METEOR"] = meteor
        if "rouge" in self.groups:
            scores["ROUGE_L"] = coco_scorers.rouge_l(hypo, refs)
        if cider is not None:
            scores["CIDEr"] = cider.score(
                cider.hypothesis(hyp), [cider.reference(c) for c in cooked]
            )
            detail["cider_planned"] = self.planned
        out.scores = {k: v for k, v in scores.items() if not math.isnan(v)}
        return out

    def covers(self, scores: Mapping[str, Any], detail: Mapping[str, Any] | None) -> bool:
        """Whether a stored result's scores and detail hold what its corpus scores need."""
        if self.lacks(scores, detail):
            return False
        if "cider" in self.groups and self.available:
            return (detail or {}).get("cider_planned") == self.planned
        return True

    def lacks(self, scores: Mapping[str, Any], detail: Mapping[str, Any] | None) -> bool:
        """Whether a stored result was scored without a metric this scorer pools.

        Fewer metrics, none, or imported (no detail stored); CIDEr-D scored against
        another planned set is not lacking. ROUGE-L needs no detail: a run of it alone
        stores none, and its results are not scored again when it continues.
        """
        need = {"bleu": "bleu", "meteor": "meteor", "cider": "cider_planned"}
        if any(key not in (detail or {}) for group, key in need.items() if group in self.groups):
            return True
        # ROUGE-L's corpus score is the mean of the samples' own: one without it would count 0
        return "rouge" in self.groups and "ROUGE_L" not in scores

    def corpus(self, samples: Sequence[SampleScore | CorpusPart]) -> dict[str, float]:
        """Corpus scores of scored samples, pooled as pycocoevalcap pools a batch of them."""
        if not self.available or not samples:
            return {}
        parts = [s if isinstance(s, CorpusPart) else CorpusPart.of(s) for s in samples]
        out: dict[str, float] = {}
        if "bleu" in self.groups:
            out.update(zip(METRIC_GROUPS["bleu"], pooled_bleu([_bleu_totals(parts)]), strict=True))
        if "meteor" in self.groups:
            out["METEOR"] = self.meteor.corpus(
                [p.meteor or "" for p in parts], [p.meteor_counts for p in parts]
            )
        if "rouge" in self.groups:
            out["ROUGE_L"] = mean([p.rouge if p.rouge is not None else 0.0 for p in parts])
        if "cider" in self.groups:
            out["CIDEr"] = mean([p.cider if p.cider is not None else 0.0 for p in parts])
        return out

    def close(self) -> None:
        """Stop the METEOR JVM, if one was started."""
        self.meteor.close()
