"""The fast BLEU / ROUGE-L / CIDEr-D give pycocoevalcap's floats exactly (==, never approx).

Real COCO captions come from captions_val2014.json inside pycocoevalcap's SPICE jar
(offline), tokenized with our PTB tokenization; adversarial and random corpora
cover what real captions rarely do (empty and repeated words, ties, one reference).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from cobra_eval.metrics import coco_scorers
from cobra_eval.metrics.corpus import ptb_tokenize, real_coco_captions
from cobra_eval.metrics.per_sample import SampleScorer

Corpus = tuple[dict[Any, list[str]], dict[Any, list[str]]]


def scorers(fast: bool) -> dict[str, Callable[[Any, Any], Any]]:
    """Metric -> compute_score(gts, res) of pycocoevalcap, or of coco_scorers when fast."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if fast:
        return {"Bleu": coco_scorers.bleu, "ROUGE_L": coco_scorers.rouge,
                "CIDEr": coco_scorers.cider}  # fmt: skip
    return {"Bleu": lambda g, r: Bleu(4).compute_score(g, r, verbose=0),
            "ROUGE_L": lambda g, r: Rouge().compute_score(g, r),
            "CIDEr": lambda g, r: Cider().compute_score(g, r)}  # fmt: skip


def scores(gts: Any, res: Any, fast: bool, errors: bool = False) -> dict[str, Any]:
    """Every metric's (corpus score, per-image scores) as plain floats; with errors, a
    metric whose scorer raises ValueError is left out (score_corpus reports it so)."""
    out: dict[str, Any] = {}
    for name, compute in scorers(fast).items():
        try:
            corpus, per_image = compute(gts, res)
        except ValueError:
            if not errors:
                raise
            continue
        if name == "Bleu":
            out.update({f"Bleu_{k + 1}": (float(corpus[k]), [float(s) for s in per_image[k]])
                        for k in range(4)})  # fmt: skip
        else:
            out[name] = (float(corpus), [float(s) for s in per_image])
    return out


def assert_identical(gts: dict[Any, list[str]], res: dict[Any, list[str]]) -> None:
    truth, got = scores(gts, res, fast=False), scores(gts, res, fast=True)
    assert set(got) == set(truth)
    for key, (corpus, per_image) in truth.items():
        assert got[key][0] == corpus, key
        differ = [i for i, a, b in zip(gts, got[key][1], per_image, strict=True) if a != b]
        assert not differ, (key, differ[:5])


def first_vs_rest(captions: dict[int, list[str]]) -> Corpus:
    """Candidate: an image's first caption; references: the others (tokenized)."""
    tokens = ptb_tokenize(captions)
    return {i: t[1:] for i, t in tokens.items()}, {i: t[:1] for i, t in tokens.items()}


@pytest.fixture(scope="module")
def coco() -> dict[int, list[str]]:
    return real_coco_captions("val2014")


def test_real_captions_first_reference_and_a_mismatched_caption(coco) -> None:
    ids = sorted(coco)[:1500]
    gts, res = first_vs_rest({i: coco[i] for i in ids})
    assert_identical(gts, res)
    # every third candidate described another image: low-overlap cases too
    other = {i: res[ids[(k + 11) % len(ids)]] if k % 3 == 0 else res[i] for k, i in enumerate(ids)}
    assert_identical(gts, other)


@pytest.mark.slow
def test_every_val2014_image_first_reference_vs_the_rest(coco) -> None:
    gts, res = first_vs_rest(coco)
    assert len(gts) > 40_000
    assert_identical(gts, res)


ADVERSARIAL: Corpus = (
    {
        "empty": ["a man riding a horse", "a horse"],
        "one": ["dog", "a dog on a couch"],
        "two": ["a dog", "the dog sleeps"],
        "three": ["a red bus", "a bus on the road"],
        "repeat": ["a a a a", "a man and a woman a"],
        "same": ["a cat sitting on a mat", "a cat on a mat"],
        "none": ["a cat sitting on a mat", "kittens"],
        "lengths": ["one", "a much longer reference with many more words than the others are"],
        "tie": ["a b c d", "a b c d e f"],
        "single_ref": ["a plate of food on a table"],
        "empty_ref": ["", "a bird on a wire"],
        "spaces": [" a  bird ", "a bird  on  a wire"],
        "long": [" ".join(f"w{n % 9}" for n in range(120)), "w1 w2 w3"],
        "unicode": ["un café près de la tour", "café"],
    },
    {
        "empty": [""],
        "one": ["dog"],
        "two": ["a dog"],
        "three": ["bus bus bus"],
        "repeat": ["a a a a a a a a"],
        "same": ["a cat sitting on a mat"],
        "none": ["zebras grazing"],
        "lengths": ["a much"],
        "tie": ["a b c d e"],
        "single_ref": ["a plate of food"],
        "empty_ref": [""],
        "spaces": ["a  bird  "],
        "long": [" ".join(f"w{n % 7}" for n in range(90))],
        "unicode": ["un café"],
    },
)


def test_adversarial_corpus_and_each_image_alone() -> None:
    gts, res = ADVERSARIAL
    assert_identical(gts, res)
    for i in gts:  # a single image: log(N) = 0, every CIDEr-D weight 0
        assert_identical({i: gts[i]}, {i: res[i]})
    one_ref = {i: refs[:1] for i, refs in gts.items()}
    assert_identical(one_ref, res)


def random_sentence(rng: random.Random, vocab: list[str]) -> str:
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 14)))


def test_random_corpora_with_heavy_repetition() -> None:
    rng = random.Random(20240501)
    for vocab_size in (2, 4, 9):
        vocab = [f"t{n}" for n in range(vocab_size)]
        gts = {
            n: [random_sentence(rng, vocab) for _ in range(rng.randint(1, 6))] for n in range(300)
        }
        res = {n: [random_sentence(rng, vocab)] for n in range(300)}
        assert_identical(gts, res)


def test_nothing_but_empty_captions_and_a_huge_vocabulary() -> None:
    gts, res = {1: [""], 2: ["", ""]}, {1: [""], 2: ["a"]}
    truth, got = scores(gts, res, False, errors=True), scores(gts, res, True, errors=True)
    assert got == truth and "CIDEr" not in got  # pycocoevalcap fails on it too
    # 57,600 distinct words: 4-gram codes would overflow int64 without re-numbering
    rng = random.Random(7)
    vocab = [f"w{n}" for n in range(57_600)]
    gts = {n: [" ".join(vocab[24 * n + k : 24 * n + k + 8]) for k in (0, 8, 16)]
           for n in range(2400)}  # fmt: skip
    res = {n: [" ".join(rng.choice(gts[n]).split()[:5] + rng.sample(vocab, 3))] for n in gts}
    assert_identical(gts, res)


@pytest.mark.parametrize(
    ("n_images", "df", "candidate"),
    [
        (9171, 9170, "common rare"),  # np.log(9170.0) != math.log(9170)
        (27, 6, "common common common rare"),  # tf 3, df 6: pow(w, 2) != w * w, and it shows
        (40504, 19143, "common rare"),  # np.log(19143.0) != math.log(19143)
    ],
)
def test_last_bit_cases_of_numpys_log_and_pow(n_images: int, df: int, candidate: str) -> None:
    # "common" occurs in the references of df images; image 0's candidate weighs it
    gts = {i: [f"common u{i}" if i < df else f"u{i}"] for i in range(n_images)}
    res = {i: [candidate if i == 0 else f"u{i} v"] for i in range(n_images)}
    assert_identical(gts, res)


def legacy_cider(hypo: str, refs: list[str], df: dict, n_images: int) -> float:
    """pycocoevalcap's CiderScorer scoring one image against a planned set's df and N."""
    from pycocoevalcap.cider.cider_scorer import CiderScorer, cook_refs, cook_test

    class LenN(list):  # CiderScorer takes log(len(crefs)) as log(N)
        def __len__(self) -> int:
            return n_images

    scorer = CiderScorer(n=4, sigma=6.0)
    scorer.ctest = [cook_test(hypo)]
    scorer.crefs = LenN([cook_refs(refs)])
    scorer.document_frequency = defaultdict(float, df)
    return float(scorer.compute_cider()[0])


def test_sample_scorer_equals_pycocoevalcaps_batch_run(coco) -> None:
    ids = sorted(coco)[2000:2400]
    references = {i: coco[i][1:] for i in ids}
    candidates = {i: coco[ids[(k + 5) % len(ids)]][0] if k % 4 == 0 else coco[i][0]
                  for k, i in enumerate(ids)}  # fmt: skip
    candidates[ids[1]] = ""
    scorer = SampleScorer(references, ("bleu", "rouge", "cider"))
    try:
        scored = scorer.score(list(candidates.items()))
        pooled = scorer.corpus(scored)
    finally:
        scorer.close()
    gts = ptb_tokenize(references)
    res = ptb_tokenize({i: [c] for i, c in candidates.items()})
    truth = scores(gts, res, fast=False)
    for key, (corpus, per_image) in truth.items():
        assert [s.scores[key] for s in scored] == per_image, key
        assert pooled[key] == corpus, key
    # BLEU's pooled statistics are exactly BleuScorer's (closest reference length)
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    for i, sample in zip(ids, scored, strict=True):
        theirs = BleuScorer(n=4)
        theirs += (res[i][0], gts[i])
        comps = theirs.ctest[0]
        reflen = theirs._single_reflen(comps["reflen"], "closest", comps["testlen"])
        assert sample.detail["bleu"] == {
            "testlen": comps["testlen"], "reflen": reflen,
            "guess": comps["guess"], "correct": comps["correct"],
        }  # fmt: skip


def test_per_sample_cider_keeps_the_planned_sets_df_and_n() -> None:
    gts, res = ADVERSARIAL
    planned = {i: refs for i, refs in gts.items() if i != "single_ref"}
    df = coco_scorers.document_frequency(
        [coco_scorers.cook(r) for r in refs] for refs in planned.values()
    )
    cider = coco_scorers.CiderD(df, len(planned))
    # every image, also one outside the planned set, and candidates of other images
    for i in gts:
        for hypo in (res[i][0], res["long"][0], gts["lengths"][1]):
            refs = gts[i]
            ours = cider.score(
                cider.hypothesis(coco_scorers.cook(hypo)),
                [cider.reference(coco_scorers.cook(r)) for r in refs],
            )
            assert ours == legacy_cider(hypo, refs, df, len(planned)), (i, hypo)


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="different images"):
        coco_scorers.cider({1: ["a"]}, {2: ["a"]})
    with pytest.raises(ValueError, match="exactly one candidate"):
        coco_scorers.bleu({1: ["a"]}, {1: ["a", "b"]})
    with pytest.raises(ValueError, match="some references"):
        coco_scorers.rouge({1: []}, {1: ["a"]})
