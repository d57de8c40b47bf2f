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

import gzip
import hashlib
import json
import math
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from cobra_eval.metrics import coco_scorers
from cobra_eval.metrics.corpus import METRIC_GROUPS, ptb_tokenize, sanitize
from cobra_eval.metrics.meteor import MeteorProcess, stats_counts
from cobra_eval.metrics.pooling import mean, pooled_bleu

#: Planned images whose references are tokenized per request when counting document frequencies.
REFERENCE_CHUNK = 4_000
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
    def from_bytes(cls, data: bytes) -> DocumentFrequency:
        loaded = json.loads(gzip.decompress(data))
        counts = {tuple(ngram.split(" ")): float(count) for ngram, count in loaded["df"]}
        return cls(int(loaded["n_images"]), counts)


def start_meteor(
    metrics: Sequence[str], references: Mapping[int, Sequence[str]] | None = None
) -> MeteorProcess:
    """A METEOR process for a scorer of these metrics, its JVM loading already if they ask
    for METEOR (and Java is here): given the references it will score against, on the
    paraphrase entries they can match (MeteorProcess.prepare), in the background."""
    meteor = MeteorProcess()
    if "meteor" in metrics and shutil.which("java") is not None:
        if references is None:
            meteor.warm_up()
        else:
            meteor.prepare(
                lambda: (text for refs in tokenized_references(references) for text in refs)
            )
    return meteor


def tokenized_references(references: Mapping[int, Sequence[str]]) -> Iterator[list[str]]:
    """Each image's references as a scorer tokenizes them, a chunk of images per request."""
    ids = list(references)
    for start in range(0, len(ids), REFERENCE_CHUNK):
        chunk = {i: references[i] for i in ids[start : start + REFERENCE_CHUNK]}
        yield from ptb_tokenize(chunk).values()


class SampleScorer:
    """Scores (image, caption) pairs against the planned samples' references."""

    def __init__(
        self,
        references: Mapping[int, Sequence[str]],
        metrics: Sequence[str],
        *,
        document_frequency: DocumentFrequency | None = None,
        meteor: MeteorProcess | None = None,
    ):
        """references: by image id, of the images that have some (kept, not copied);
        meteor: a METEOR process to use (one start_meteor may have started already)."""
        self.groups = [g for g in metrics if g in PER_SAMPLE_GROUPS]
        self.available = bool(self.groups) and shutil.which("java") is not None
        # raw references, tokenized with each batch's captions: holding every planned
        # image's tokenized references would cost ~80 MB at 100k images (and the raw
        # ones are looked up in the samples, not copied)
        self.references: Mapping[int, Sequence[str]] = {}
        self.meteor = meteor or MeteorProcess()
        self.document_frequency: DocumentFrequency | None = None
        self._cider: coco_scorers.CiderD | None = None
        if not self.available:
            return
        self.references = references
        if "cider" in self.groups:
            if document_frequency is None:
                counts = coco_scorers.document_frequency(self._cooked_references())
                document_frequency = DocumentFrequency(len(self.references), counts)
            self.document_frequency = document_frequency
            # the planned set's df and N (not this call's): every sample gets its batch value
            self._cider = coco_scorers.CiderD(
                document_frequency.counts, document_frequency.n_images
            )

    def _cooked_references(self) -> Iterator[list[Any]]:
        """Every planned image's cooked references, tokenized a chunk at a time and dropped."""
        for refs in tokenized_references(self.references):
            yield [coco_scorers.cook(r) for r in refs]

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
        if "bleu" in self.groups or self._cider is not None:
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
        if self._cider is not None:
            cider = self._cider
            scores["CIDEr"] = cider.score(
                cider.hypothesis(hyp), [cider.reference(c) for c in cooked]
            )
            assert self.document_frequency is not None
            detail["cider_planned"] = self.document_frequency.n_images
        out.scores = {k: v for k, v in scores.items() if not math.isnan(v)}
        return out

    def covers(self, detail: Mapping[str, Any]) -> bool:
        """Whether a stored detail has everything this scorer's corpus scores need."""
        need = {"bleu": "bleu", "meteor": "meteor"}
        if any(key not in detail for group, key in need.items() if group in self.groups):
            return False
        if "cider" in self.groups and self.document_frequency is not None:
            return detail.get("cider_planned") == self.document_frequency.n_images
        return True

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
