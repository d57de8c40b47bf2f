"""BLEU-1..4, ROUGE-L and CIDEr-D with pycocoevalcap 1.2's exact floating-point arithmetic.

A re-implementation (new code, no copied source) of the arithmetic of pycocoevalcap's
``BleuScorer`` (option "closest"), ``Rouge`` (beta 1.2) and ``CiderScorer`` (n=4,
sigma=6): https://github.com/salaniz/pycocoevalcap, from the MS COCO caption
evaluation code, BSD 2-clause licence, (c) 2014 Xinlei Chen, Hao Fang, Tsung-Yi Lin
and Ramakrishna Vedantam (its bleu_scorer.py after David Chiang's BLEU scorer).
Every float comes from the same operations in the same order as there, so scores
are equal (==), not close. Speed comes from doing less work, not other arithmetic:

- n-grams are counted once per sentence, in ``precook``'s first-occurrence order;
- a CIDEr-D weight and its square depend only on (term frequency, document
  frequency), so each distinct pair is computed once with pycocoevalcap's own
  numpy scalar calls: ``np.log`` and ``pow(numpy float, 2)`` differ from
  ``math.log`` and ``x * x`` in the last bit for some inputs; likewise each
  length penalty, and ``np.mean`` is called on the same 4-element arrays;
- an n-gram missing from a reference adds ``min(h, 0.0) * 0.0 == 0.0`` to a
  cosine sum, so only shared n-grams are visited;
- ROUGE-L's LCS length comes from a bit-parallel algorithm (the same integer);
- a whole corpus is scored with numpy on integer n-gram ids, using only
  operations that round exactly as scalar ones (+ - * /, sqrt, minimum) and
  keeping every float sum left to right in pycocoevalcap's order.

Float sums of our own are never ``sum()`` (compensated from Python 3.12) nor numpy
reductions (pairwise): both would round differently from pycocoevalcap's ``+=`` loops.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import reduce
from operator import add
from typing import Any

import numpy as np

from cobra_eval.metrics.pooling import pooled_bleu

N = 4  #: n-gram orders of BLEU and CIDEr-D
SIGMA = 6.0  #: CIDEr-D's length-penalty standard deviation
BETA = 1.2  #: ROUGE-L's recall weight
SMALL, TINY = 1e-9, 1e-15  # BleuScorer's guards against division by zero

Ngram = tuple[str, ...]
#: A sentence as pycocoevalcap's precook sees it: word count and n-gram counts per order.
Cooked = tuple[int, tuple[Counter[Ngram], ...]]
#: A candidate for CIDEr-D: per order [(n-gram, weight, df)], per-order norms, length.
Hypothesis = tuple[tuple[list[tuple[Ngram, float, Any]], ...], tuple[float, ...], int]
#: A reference for CIDEr-D: its counts per order, per-order norms, length.
Reference = tuple[tuple[Counter[Ngram], ...], tuple[float, ...], int]


def cook(text: str) -> Cooked:
    """Word count and n-gram counts (orders 1..4) of whitespace-split text, as ``precook``."""
    words = text.split()
    # Counter keeps first-occurrence order, the order precook inserts n-grams in; the
    # shortest shifted list ends the n-grams (zip not strict)
    shifted = [words[k:] for k in range(N)]
    return len(words), tuple(Counter(zip(*shifted[:k], strict=False)) for k in range(1, N + 1))


# --- BLEU ---------------------------------------------------------------------------


def bleu_comps(hyp: Cooked, refs: Sequence[Cooked]) -> dict[str, Any]:
    """One image's {testlen, reflen (closest), guess, correct}, as ``cook_test`` + "closest"."""
    testlen, counts = hyp
    reflen = min((abs(length - testlen), length) for length, _ in refs)[1]
    correct = []
    for k in range(N):
        ref_counts = [ref[1][k] for ref in refs]
        total = 0  # integers: the order of the clipped counts does not matter
        for ngram, count in counts[k].items():
            best = max(rc.get(ngram, 0) for rc in ref_counts)
            total += min(count, best)
        correct.append(total)
    return _comps(testlen, reflen, correct)


def _comps(testlen: int, reflen: int, correct: list[int]) -> dict[str, Any]:
    guess = [max(0, testlen - k + 1) for k in range(1, N + 1)]
    return {"testlen": testlen, "reflen": reflen, "guess": guess, "correct": correct}


def bleu_of_comps(comps: Mapping[str, Any]) -> list[float]:
    """One image's BLEU-1..4, as ``BleuScorer.compute_score`` appends it to its per-image list."""
    scores, bleu = [], 1.0
    for k in range(N):
        bleu *= (float(comps["correct"][k]) + TINY) / (float(comps["guess"][k]) + SMALL)
        scores.append(bleu ** (1.0 / (k + 1)))
    ratio = (comps["testlen"] + TINY) / (comps["reflen"] + SMALL)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def bleu(
    gts: Mapping[Any, Sequence[str]], res: Mapping[Any, Sequence[str]]
) -> tuple[list[float], list[list[float]]]:
    """``Bleu(4).compute_score(gts, res)``: corpus BLEU-1..4 and per-order per-image lists."""
    table = _NgramTable(gts, res)
    n_refs = table.n_refs
    correct = np.zeros((table.n_images, N), dtype=np.int64)
    for k, order in enumerate(table.orders):
        # clipped counts: min(candidate count, max over the references' counts)
        best = np.zeros(len(order.tf), dtype=np.int64)
        np.maximum.at(best, order.hyp_match, order.tf[order.ref_match])
        hyp = order.sentence >= n_refs
        np.add.at(correct[:, k], order.sentence[hyp] - n_refs, np.minimum(order.tf, best)[hyp])
    testlen, ref_len = table.lengths[n_refs:], table.lengths[:n_refs]
    # "closest" reference length, the shorter on a tie: min over (|l - testlen|, l)
    width = int(table.lengths.max(initial=0)) + 1
    gap = np.abs(ref_len - testlen[table.ref_image]) * width + ref_len
    reflen = np.minimum.reduceat(gap, table.first_ref) % width if n_refs else gap
    rows = zip(testlen.tolist(), reflen.tolist(), correct.tolist(), strict=True)
    comps = [_comps(t, r, c) for t, r, c in rows]
    per_image = [bleu_of_comps(c) for c in comps]
    return pooled_bleu(comps, N), [[s[k] for s in per_image] for k in range(N)]


# --- ROUGE-L ------------------------------------------------------------------------


def rouge_l(hyp: str, refs: Sequence[str]) -> float:
    """One image's ROUGE-L, as ``Rouge.calc_score([hyp], refs)`` (tokens split on ' ')."""
    token_c = hyp.split(" ")
    m = len(token_c)
    # bit-parallel LCS length (Allison-Dix, Hyyrö): one bit per candidate token
    masks: dict[str, int] = {}
    for pos, token in enumerate(token_c):
        masks[token] = masks.get(token, 0) | (1 << pos)
    full = (1 << m) - 1
    prec, rec = [], []
    for reference in refs:
        token_r = reference.split(" ")
        v = full
        for token in token_r:
            match = masks.get(token)
            if match:
                u = v & match
                v = (v + u) | (v - u)
        lcs = m - (v & full).bit_count()
        prec.append(lcs / float(m))
        rec.append(lcs / float(len(token_r)))
    prec_max, rec_max = max(prec), max(rec)
    if prec_max != 0 and rec_max != 0:
        return ((1 + BETA**2) * prec_max * rec_max) / float(rec_max + BETA**2 * prec_max)
    return 0.0


def rouge(
    gts: Mapping[Any, Sequence[str]], res: Mapping[Any, Sequence[str]]
) -> tuple[float, np.ndarray]:
    """``Rouge().compute_score(gts, res)``: the np.mean of per-image ROUGE-L, and those."""
    scores = np.array([rouge_l(res[i][0], gts[i]) for i in _ids(gts, res)])
    return float(np.mean(scores)), scores


# --- CIDEr-D ------------------------------------------------------------------------


def document_frequency(cooked_refs: Iterable[Sequence[Cooked]]) -> dict[Ngram, float]:
    """In how many images' references each n-gram occurs (``CiderScorer.compute_doc_freq``)."""
    counts = Counter(itertools.chain.from_iterable(map(image_ngrams, cooked_refs)))
    return {ngram: float(n) for ngram, n in counts.items()}


def image_ngrams(cooked_refs: Sequence[Cooked]) -> set[Ngram]:
    """The distinct n-grams of one image's references: what its document frequency counts."""
    return set().union(*(c for _, by_order in cooked_refs for c in by_order))


class _Table(dict[Any, Any]):
    """A cache filled on first use, so C-level ``map(table.__getitem__, ...)`` can read it."""

    def __init__(self, compute: Callable[[Any], Any]):
        super().__init__()
        self._compute = compute

    def __missing__(self, key: Any) -> Any:
        value = self[key] = self._compute(key)
        return value


class CiderD:
    """CIDEr-D against fixed document frequencies and N, as ``CiderScorer.compute_cider``."""

    def __init__(self, df: Mapping[Ngram, float], n_images: int, sigma: float = SIGMA):
        self.df = df
        self.sigma = sigma
        self.ref_len = np.log(float(n_images))  # CiderScorer's log(N), a numpy float
        # (term frequency, df) -> (weight, squared weight); df None: in no reference
        self.weights = _Table(self._weight)
        self._weight1 = _Table(lambda df: self.weights[1, df][0])  # tf 1, the usual case
        self._square1 = _Table(lambda df: self.weights[1, df][1])
        self.penalties = _Table(self._penalty)  # length difference -> Gaussian penalty

    def _weight(self, key: tuple[int, Any]) -> tuple[float, float]:
        # counts2vec's expressions on numpy scalars, as there
        term_freq, df = key
        vec = float(term_freq) * (self.ref_len - np.log(max(1.0, float(df or 0.0))))
        return float(vec), float(pow(vec, 2))

    def _penalty(self, diff: int) -> float:
        delta = float(diff)
        return float(np.e ** (-(delta**2) / (2 * self.sigma**2)))

    def _norms(self, cooked: Cooked) -> tuple[float, ...]:
        n_words, by_order = cooked
        norms = []
        for k, counts in enumerate(by_order):
            if len(counts) == max(n_words - k, 0):
                # every n-gram once (tf 1): the same left-to-right sum, at C speed
                norm = reduce(add, map(self._square1.__getitem__, map(self.df.get, counts)), 0.0)
            else:
                norm = 0.0
                for ngram, term_freq in counts.items():  # precook's order
                    norm += self.weights[term_freq, self.df.get(ngram)][1]
            norms.append(math.sqrt(norm))  # correctly rounded, as np.sqrt
        return tuple(norms)

    def reference(self, cooked: Cooked) -> Reference:
        """What a reference contributes: its counts, norms and length (counts2vec's bigrams)."""
        return cooked[1], self._norms(cooked), max(cooked[0] - 1, 0)

    def hypothesis(self, cooked: Cooked) -> Hypothesis:
        """A candidate's weights in precook's order, with each n-gram's df for lookups."""
        vecs = []
        for counts in cooked[1]:
            entries = []
            for ngram, term_freq in counts.items():
                df = self.df.get(ngram)
                entries.append((ngram, self.weights[term_freq, df][0], df))
            vecs.append(entries)
        return tuple(vecs), self._norms(cooked), max(cooked[0] - 1, 0)

    def score(self, hyp: Hypothesis, refs: Sequence[Reference]) -> float:
        """One image's CIDEr-D (x10, mean over orders, averaged over references)."""
        hyp_vecs, hyp_norms, hyp_len = hyp
        total = [0.0] * N
        for ref_counts, ref_norms, ref_len in refs:
            penalty = self.penalties[hyp_len - ref_len]
            for k in range(N):
                counts, val = ref_counts[k], 0.0
                for ngram, h, df in hyp_vecs[k]:
                    term_freq = counts.get(ngram)
                    if term_freq is not None:
                        r = self._weight1[df] if term_freq == 1 else self.weights[term_freq, df][0]
                        val += min(h, r) * r
                if hyp_norms[k] != 0 and ref_norms[k] != 0:
                    val /= hyp_norms[k] * ref_norms[k]
                val *= penalty
                total[k] += val
        score = float(np.mean(np.array(total)))
        score /= len(refs)
        score *= 10.0
        return score


def cider(
    gts: Mapping[Any, Sequence[str]], res: Mapping[Any, Sequence[str]]
) -> tuple[float, np.ndarray]:
    """``Cider().compute_score(gts, res)``: the np.mean of per-image CIDEr-D, and those."""
    table = _NgramTable(gts, res)
    if not table.lengths[: table.n_refs].any():
        # no document frequency at all: pycocoevalcap fails too (max() of nothing)
        raise ValueError("CIDEr-D is undefined when no reference has a word")
    n_img, n_refs, ref_img = table.n_images, table.n_refs, table.ref_image
    scorer = CiderD({}, n_img)
    length = np.maximum(table.lengths - 1, 0)  # counts2vec's "length": bigrams
    penalty = _lookup(length[n_refs:][ref_img] - length[:n_refs], scorer.penalties.__getitem__)
    total = np.zeros((n_img, N))
    for k, order in enumerate(table.orders):
        # document frequency: in how many images' references each n-gram occurs
        ref = order.sentence < n_refs
        pairs = _distinct(ref_img[order.sentence[ref]] * order.n_ngrams + order.ngram[ref])
        df = np.bincount(pairs % order.n_ngrams, minlength=order.n_ngrams)
        tf_df = order.tf * (n_img + 1) + df[order.ngram]
        weight = _lookup(tf_df, lambda key: scorer.weights[divmod(key, n_img + 1)][0])
        square = _lookup(tf_df, lambda key: scorer.weights[divmod(key, n_img + 1)][1])
        norm = np.sqrt(_ordered_sums(order.sentence, order.rank, square, table.n_sentences))
        h, r = order.hyp_match, order.ref_match
        term = np.minimum(weight[h], weight[r]) * weight[r]
        # each reference's sum over the candidate's n-grams, in the candidate's order
        val = _ordered_sums(order.sentence[r], order.rank[h], term, n_refs)
        hyp_norm, ref_norm = norm[n_refs:][ref_img], norm[:n_refs]
        both = (hyp_norm != 0) & (ref_norm != 0)
        val[both] /= hyp_norm[both] * ref_norm[both]
        val *= penalty
        # summed over the references in their order, as CiderScorer's score += sim(...)
        for j in range(int(table.ref_index.max(initial=-1)) + 1):
            at = table.ref_index == j
            total[ref_img[at], k] += val[at]
    # np.mean over the 4 orders of each image: CiderScorer's very call, so its summation
    scores = np.array([np.mean(row) for row in total]) / table.n_refs_of_image
    scores *= 10.0
    return float(np.mean(scores)), scores


# --- a corpus as integer n-gram ids -------------------------------------------------


class _Order:
    """One n-gram order of a corpus: (sentence, n-gram id, count) in precook's order, and
    each reference entry paired with the candidate entry of the same n-gram and image."""

    def __init__(self, sentence: np.ndarray, code: np.ndarray, image: np.ndarray, n_refs: int):
        ngram = np.unique(code, return_inverse=True)[1]
        self.n_ngrams = int(ngram.max(initial=0)) + 1
        # distinct n-grams of each sentence with their counts, by first occurrence
        key = sentence * self.n_ngrams + ngram
        uniq, first, self.tf = np.unique(key, return_index=True, return_counts=True)
        by_first = np.argsort(first, kind="stable")
        uniq, self.tf = uniq[by_first], self.tf[by_first]
        self.sentence, self.ngram = uniq // self.n_ngrams, uniq % self.n_ngrams
        starts = np.searchsorted(self.sentence, self.sentence, side="left")
        self.rank = np.arange(len(uniq)) - starts  # position within its sentence
        # a candidate has each n-gram once: match references to it by (image, n-gram)
        img_key = image[self.sentence] * self.n_ngrams + self.ngram
        is_hyp = self.sentence >= n_refs
        hyp, ref = np.flatnonzero(is_hyp), np.flatnonzero(~is_hyp)
        hyp = hyp[np.argsort(img_key[hyp], kind="stable")]
        at = np.searchsorted(img_key[hyp], img_key[ref]).clip(max=max(len(hyp) - 1, 0))
        found = img_key[hyp][at] == img_key[ref] if len(hyp) else np.zeros(len(ref), bool)
        self.hyp_match, self.ref_match = hyp[at[found]], ref[found]


class _NgramTable:
    """Every reference (image by image), then every candidate, as n-gram ids of orders 1..4."""

    def __init__(self, gts: Mapping[Any, Sequence[str]], res: Mapping[Any, Sequence[str]]):
        ids = _ids(gts, res)
        refs = [gts[i] for i in ids]
        self.n_images = len(ids)
        self.n_refs_of_image = np.array([len(r) for r in refs], dtype=np.int64)
        self.n_refs = int(self.n_refs_of_image.sum())
        self.ref_image = np.repeat(np.arange(self.n_images), self.n_refs_of_image)
        self.first_ref = np.cumsum(self.n_refs_of_image) - self.n_refs_of_image
        self.ref_index = np.arange(self.n_refs) - self.first_ref[self.ref_image]
        split = [t.split() for t in itertools.chain(*refs, (res[i][0] for i in ids))]
        self.n_sentences = len(split)
        self.lengths = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
        words = list(itertools.chain.from_iterable(split))
        vocab = {w: n for n, w in enumerate(dict.fromkeys(words))}
        token = np.fromiter(map(vocab.__getitem__, words), dtype=np.int64, count=len(words))
        sentence = np.repeat(np.arange(self.n_sentences), self.lengths)
        start = np.cumsum(self.lengths) - self.lengths
        room = self.lengths[sentence] - (np.arange(len(words)) - start[sentence])
        image = np.concatenate([self.ref_image, np.arange(self.n_images)])
        self.orders: list[_Order] = []
        code, width = token, max(len(vocab), 1)
        for k in range(1, N + 1):
            if k > 1:
                if int(code.max(initial=0)) >= 2**62 // width:
                    code = np.unique(code, return_inverse=True)[1]  # stay within int64
                code = code[:-1] * width + token[k - 1 :]
            valid = room[: len(code)] >= k  # the n-gram ends inside its sentence
            self.orders.append(
                _Order(sentence[: len(code)][valid], code[valid], image, self.n_refs)
            )


def _ordered_sums(
    segment: np.ndarray, rank: np.ndarray, values: np.ndarray, n_segments: int
) -> np.ndarray:
    """Per segment, 0.0 + its values in rank order: a Python loop's sum, not a pairwise one."""
    total = np.zeros(n_segments)
    if len(values):
        # a small integer type makes numpy's stable sort a radix sort
        by_rank = np.argsort(rank.astype(np.min_scalar_type(int(rank.max()))), kind="stable")
        bounds = np.searchsorted(rank[by_rank], np.arange(int(rank.max()) + 2))
        for lo, hi in itertools.pairwise(bounds):
            at = by_rank[lo:hi]  # at most one value per segment at each rank
            total[segment[at]] += values[at]
    return total


def _lookup(keys: np.ndarray, compute: Callable[[int], float]) -> np.ndarray:
    """compute(key) for every key, its scalar arithmetic run once per distinct key."""
    distinct = _distinct(keys)
    values = np.array([compute(int(key)) for key in distinct], dtype=np.float64)
    return values[np.searchsorted(distinct, keys)]


def _distinct(keys: np.ndarray) -> np.ndarray:
    """The sorted distinct values (faster here than numpy 2's hash-based np.unique)."""
    keys = np.sort(keys)
    return keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys


def _ids(gts: Mapping[Any, Sequence[str]], res: Mapping[Any, Sequence[str]]) -> list[Any]:
    # pycocoevalcap's sanity checks: same images, one candidate, at least one reference
    if gts.keys() != res.keys():
        raise ValueError("references and candidates cover different images")
    if bad := [i for i in gts if len(res[i]) != 1 or not gts[i]]:
        raise ValueError(f"images {bad[:5]}: need exactly one candidate and some references")
    return list(gts)
