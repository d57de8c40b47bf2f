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
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cobra_eval.metrics.corpus import METRIC_GROUPS, ptb_tokenize, sanitize
from cobra_eval.metrics.meteor import MeteorProcess
from cobra_eval.metrics.pooling import mean, pooled_bleu

#: Metric groups that can be scored per sample (SPICE is corpus-only here).
PER_SAMPLE_GROUPS = ("bleu", "meteor", "rouge", "cider")


@dataclass
class SampleScore:
    """One caption's scores and the statistics its corpus scores are pooled from."""

    scores: dict[str, float] = field(default_factory=dict)
    #: {"bleu": {testlen, reflen, guess, correct}, "meteor": stats line, "cider_planned": N}
    detail: dict[str, Any] = field(default_factory=dict)


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


class _LenN(list):
    """A list that reports the planned set's size: CiderScorer takes log(len(crefs)) as log(N)."""

    def __init__(self, items: Iterable[Any], n: int):
        super().__init__(items)
        self._n = n

    def __len__(self) -> int:
        return self._n


class SampleScorer:
    """Scores (image, caption) pairs against the planned samples' references."""

    def __init__(
        self,
        references: Mapping[int, Sequence[str]],
        metrics: Sequence[str],
        *,
        document_frequency: DocumentFrequency | None = None,
    ):
        self.groups = [g for g in metrics if g in PER_SAMPLE_GROUPS]
        self.available = bool(self.groups) and shutil.which("java") is not None
        self.refs: dict[int, list[str]] = {}
        self.meteor = MeteorProcess()
        self.document_frequency: DocumentFrequency | None = None
        if not self.available:
            return
        self.refs = ptb_tokenize({i: list(r) for i, r in references.items() if r})
        if "cider" in self.groups:
            from pycocoevalcap.cider.cider_scorer import cook_refs

            self._cooked = {i: cook_refs(refs) for i, refs in self.refs.items()}
            if document_frequency is None:
                counts: defaultdict[Any, float] = defaultdict(float)
                for cooked in self._cooked.values():
                    for ngram in {ng for ref in cooked for ng in ref}:
                        counts[ngram] += 1
                document_frequency = DocumentFrequency(len(self._cooked), dict(counts))
            self.document_frequency = document_frequency
            self._df = defaultdict(float, document_frequency.counts)

    @property
    def planned(self) -> int:
        """N of CIDEr-D's log(N): the planned samples that have references."""
        return len(self.refs)

    def score(self, items: Sequence[tuple[int, str]]) -> list[SampleScore]:
        """Scores of every (image_id, caption); empty for a pair that cannot be scored."""
        if not self.available or not items:
            return [SampleScore() for _ in items]
        texts = ptb_tokenize({k: [sanitize(text)] for k, (_, text) in enumerate(items)})
        out = []
        for k, (image_id, _) in enumerate(items):
            refs = self.refs.get(image_id)
            out.append(self._one(image_id, texts[k][0], refs) if refs else SampleScore())
        return out

    def _one(self, image_id: int, hypo: str, refs: list[str]) -> SampleScore:
        out = SampleScore()
        scores, detail = out.scores, out.detail
        if "bleu" in self.groups:
            from pycocoevalcap.bleu.bleu_scorer import BleuScorer

            bleu = BleuScorer(n=4)
            bleu += (hypo, refs)
            _, per_image = bleu.compute_score(option="closest", verbose=0)
            scores.update({key: float(per_image[n][0]) for n, key in
                           enumerate(METRIC_GROUPS["bleu"])})  # fmt: skip
            comps = bleu.ctest[0]
            detail["bleu"] = {
                "testlen": comps["testlen"],
                "reflen": bleu._single_reflen(comps["reflen"], "closest", comps["testlen"]),
                "guess": list(comps["guess"]),
                "correct": list(comps["correct"]),
            }
        if "meteor" in self.groups:
            stats = self.meteor.stats(hypo, refs)
            scores["METEOR"] = self.meteor.evaluate([stats])[1][0]
            detail["meteor"] = stats
        if "rouge" in self.groups:
            from pycocoevalcap.rouge.rouge import Rouge

            scores["ROUGE_L"] = float(Rouge().calc_score([hypo], refs))
        if "cider" in self.groups:
            from pycocoevalcap.cider.cider_scorer import CiderScorer, cook_test

            cider = CiderScorer(n=4, sigma=6.0)
            cider.ctest = [cook_test(hypo)]
            assert self.document_frequency is not None
            cider.crefs = _LenN([self._cooked[image_id]], self.document_frequency.n_images)
            cider.document_frequency = self._df
            scores["CIDEr"] = float(cider.compute_cider()[0])
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

    def corpus(self, samples: Sequence[SampleScore]) -> dict[str, float]:
        """Corpus scores of scored samples, pooled as pycocoevalcap pools a batch of them."""
        if not self.available or not samples:
            return {}
        out: dict[str, float] = {}
        if "bleu" in self.groups:
            out.update(zip(METRIC_GROUPS["bleu"], pooled_bleu([s.detail["bleu"] for s in samples]),
                           strict=True))  # fmt: skip
        if "meteor" in self.groups:
            out["METEOR"] = self.meteor.evaluate([s.detail["meteor"] for s in samples])[0]
        for key, group in (("ROUGE_L", "rouge"), ("CIDEr", "cider")):
            if group in self.groups:
                out[key] = mean([s.scores.get(key, 0.0) for s in samples])
        return out

    def close(self) -> None:
        """Stop the METEOR JVM, if one was started."""
        self.meteor.close()
