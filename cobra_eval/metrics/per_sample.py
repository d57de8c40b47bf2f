"""Per-sample COCO caption scores, computed as each sample lands.

BLEU, METEOR and ROUGE-L of one image depend on that image alone, so scoring it
alone gives pycocoevalcap's per-image value. CIDEr-D does not: its document
frequencies and log(N) come from the references of the evaluated set. Those are
the planned samples' references, known before any generation, so they are fixed
up front and every sample scored alone gets exactly its batch-evaluation value.
"""

from __future__ import annotations

import math
import shutil
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cobra_eval.metrics.corpus import METRIC_GROUPS, ptb_tokenize, sanitize

#: Metric groups that can be scored per sample (SPICE is corpus-only here).
PER_SAMPLE_GROUPS = ("bleu", "meteor", "rouge", "cider")


class _LenN(list):
    """A list that reports the planned set's size: CiderScorer takes log(len(crefs)) as log(N)."""

    def __init__(self, items: Iterable[Any], n: int):
        super().__init__(items)
        self._n = n

    def __len__(self) -> int:
        return self._n


class SampleScorer:
    """Scores (image, caption) pairs against the planned samples' references."""

    def __init__(self, references: Mapping[int, Sequence[str]], metrics: Sequence[str]):
        self.groups = [g for g in metrics if g in PER_SAMPLE_GROUPS]
        self.available = bool(self.groups) and shutil.which("java") is not None
        self.refs: dict[int, list[str]] = {}
        self._meteor: Any = None
        if not self.available:
            return
        self.refs = ptb_tokenize({i: list(r) for i, r in references.items()})
        if "cider" in self.groups:
            from pycocoevalcap.cider.cider_scorer import cook_refs

            self._cooked = {i: cook_refs(refs) for i, refs in self.refs.items()}
            self._df: defaultdict[Any, float] = defaultdict(float)
            for cooked in self._cooked.values():
                for ngram in {ng for ref in cooked for ng in ref}:
                    self._df[ngram] += 1

    def score(self, items: Sequence[tuple[int, str]]) -> list[dict[str, float]]:
        """Scores of every (image_id, caption); {} for a pair that cannot be scored."""
        if not self.available or not items:
            return [{} for _ in items]
        texts = ptb_tokenize({k: [sanitize(text)] for k, (_, text) in enumerate(items)})
        out = []
        for k, (image_id, _) in enumerate(items):
            refs = self.refs.get(image_id)
            out.append(self._one(image_id, texts[k][0], refs) if refs else {})
        return out

    def _one(self, image_id: int, hypo: str, refs: list[str]) -> dict[str, float]:
        scores: dict[str, float] = {}
        if "bleu" in self.groups:
            from pycocoevalcap.bleu.bleu_scorer import BleuScorer

            bleu = BleuScorer(n=4)
            bleu += (hypo, refs)
            _, per_image = bleu.compute_score(option="closest", verbose=0)
            scores.update({key: float(per_image[n][0]) for n, key in
                           enumerate(METRIC_GROUPS["bleu"])})  # fmt: skip
        if "meteor" in self.groups:
            scores["METEOR"] = self._meteor_score(hypo, refs)
        if "rouge" in self.groups:
            from pycocoevalcap.rouge.rouge import Rouge

            scores["ROUGE_L"] = float(Rouge().calc_score([hypo], refs))
        if "cider" in self.groups:
            from pycocoevalcap.cider.cider_scorer import CiderScorer, cook_test

            cider = CiderScorer(n=4, sigma=6.0)
            cider.ctest = [cook_test(hypo)]
            cider.crefs = _LenN([self._cooked[image_id]], len(self._cooked))
            cider.document_frequency = self._df
            scores["CIDEr"] = float(cider.compute_cider()[0])
        return {k: v for k, v in scores.items() if not math.isnan(v)}

    def _meteor_score(self, hypo: str, refs: list[str]) -> float:
        if self._meteor is None:
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()
        score, _ = self._meteor.compute_score({0: refs}, {0: [hypo]})
        return float(score)

    def close(self) -> None:
        """Stop the METEOR JVM, if one was started."""
        if self._meteor is not None:
            proc = self._meteor.meteor_p
            proc.kill()
            proc.wait()
            if self._meteor.lock.locked():
                self._meteor.lock.release()
            self._meteor = None
