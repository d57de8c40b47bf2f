"""Per-sample scores as samples land equal pycocoevalcap's batch evaluation, on real COCO captions.

References come from the real captions_val2014.json inside pycocoevalcap's SPICE jar
(offline). Candidates are another reference of the same image (held out of its
references) or, for every third image, a reference of a different image.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from cobra_eval.metrics.corpus import pycocoevalcap_dir, real_coco_captions, score_corpus
from cobra_eval.metrics.per_sample import PreparedScoring, SampleScorer

N_IMAGES = 1000


@pytest.fixture(scope="module")
def coco() -> tuple[dict[int, str], dict[int, list[str]]]:
    captions = real_coco_captions()
    ids = sorted(captions)[:N_IMAGES]
    candidates, references = {}, {}
    for k, image_id in enumerate(ids):
        refs = captions[image_id]
        references[image_id] = refs[1:]
        other = ids[(k + 7) % len(ids)]
        candidates[image_id] = captions[other][0] if k % 3 == 2 else refs[0]
    return candidates, references


def official(candidates: dict[int, str], references: dict[int, list[str]], meteor: bool) -> dict:
    """pycocoevalcap's own pipeline: its PTBTokenizer, its scorers, per image and corpus."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    res = tok.tokenize({i: [{"caption": c}] for i, c in candidates.items()})
    ids = list(gts)
    out: dict = {"ids": ids}
    bleu, bleus = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        out[f"Bleu_{n + 1}"] = (bleu[n], bleus[n])
    out["ROUGE_L"] = Rouge().compute_score(gts, res)
    out["CIDEr"] = Cider().compute_score(gts, res)
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            out["METEOR"] = scorer.compute_score(gts, res)
        finally:
            scorer.meteor_p.kill()
            scorer.meteor_p.wait()
    return out


@pytest.mark.slow
def test_incremental_and_corpus_scores_equal_pycocoevalcap(coco) -> None:
    candidates, references = coco
    truth = official(candidates, references, meteor=True)
    groups = ("bleu", "meteor", "rouge", "cider")
    # METEOR as a run starts it: its paraphrase table cut to these references
    scorer = SampleScorer(references, groups, prepared=PreparedScoring(groups, references))
    try:
        # as a run commits them: one small batch at a time
        items = list(candidates.items())
        ours = []
        for start in range(0, len(items), 50):
            ours += scorer.score(items[start : start + 50])
        # corpus scores at a checkpoint are pooled from the per-sample statistics
        pooled = scorer.corpus(ours)
        half = scorer.corpus(ours[: N_IMAGES // 2])
    finally:
        scorer.close()
    keys = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]
    for key in keys:
        per_image = list(truth[key][1])
        assert len(per_image) == len(ours) == N_IMAGES
        worst = max(abs(a.scores[key] - b) for a, b in zip(ours, per_image, strict=True))
        assert worst <= 1e-9, (key, worst)
    corpus = score_corpus(candidates, references, ("bleu", "meteor", "rouge", "cider"))
    for key in keys:
        assert corpus.scores[key] == pytest.approx(float(truth[key][0]), abs=1e-9), key
        assert pooled[key] == pytest.approx(float(truth[key][0]), abs=1e-9), key
    # a partial pool (a checkpoint halfway) is pycocoevalcap's corpus score of that half,
    # except CIDEr-D, whose document frequencies stay those of the whole planned set
    first = dict(list(candidates.items())[: N_IMAGES // 2])
    truth_half = official(first, {i: references[i] for i in first}, meteor=True)
    for key in keys[:-1]:
        assert half[key] == pytest.approx(float(truth_half[key][0]), abs=1e-9), key
    cider_half = sum(s.scores["CIDEr"] for s in ours[: N_IMAGES // 2]) / (N_IMAGES // 2)
    assert half["CIDEr"] == pytest.approx(cider_half, abs=1e-12)
    # the comparison can fail: mismatched captions really score lower
    mismatched = [ours[k].scores["CIDEr"] for k in range(N_IMAGES) if k % 3 == 2]
    matched = [ours[k].scores["CIDEr"] for k in range(N_IMAGES) if k % 3 != 2]
    assert sum(mismatched) / len(mismatched) < sum(matched) / len(matched) / 3


def test_hazardous_captions_never_shift_scores(tmp_path: Path) -> None:
    references = {
        1: ["a dog on a beach", "a brown dog running"],
        2: ["a red bus", "a bus"],
        3: ["two cats", "a pair of cats"],
        4: ["a kite in the sky", "a kite"],
    }
    clean = {1: "a dog on a beach", 2: "a red bus", 3: "two cats", 4: "a kite in the sky"}
    hazards = {
        1: "a dog\non a\r\nbeach",
        2: "a red\u2028bus",
        3: "two\x0bcats\x0c",
        4: "a kite ||| in the sky",
    }
    scorer = SampleScorer(references, ("bleu", "meteor", "rouge", "cider"))
    try:
        assert scorer.score(list(hazards.items())) == scorer.score(list(clean.items()))
        # an empty caption between others shifts nothing either
        mixed = scorer.score([(1, clean[1]), (2, ""), (3, clean[3])])
        assert mixed[0] == scorer.score([(1, clean[1])])[0]
        assert mixed[1].scores["CIDEr"] == mixed[1].scores["Bleu_1"] == 0.0
        assert mixed[2] == scorer.score([(3, clean[3])])[0]
    finally:
        scorer.close()
    bad_refs = {i: [r.replace(" ", "\n", 1) for r in refs] for i, refs in references.items()}
    assert (
        score_corpus(clean, bad_refs, ("cider",)).scores
        == score_corpus(clean, references, ("cider",)).scores
    )


def test_separators_in_references_and_the_tokenizer_temp_location() -> None:
    tokenizer_dir = pycocoevalcap_dir() / "tokenizer"
    before = sorted(p.name for p in tokenizer_dir.iterdir())
    clean = {1: ["a dog on a beach", "a dog running"], 2: ["a red bus", "a bus on a road"]}
    split = {1: ["a dog ||| on a beach", "a dog running"], 2: ["a red bus", "a bus|||on a road"]}
    candidates = {1: "a dog on the beach", 2: "a red bus on a road"}
    groups = ("bleu", "meteor", "rouge", "cider")
    assert (
        score_corpus(candidates, split, groups).scores
        == score_corpus(candidates, clean, groups).scores
    )
    # pycocoevalcap's tokenizer writes into site-packages; ours never does
    assert sorted(p.name for p in tokenizer_dir.iterdir()) == before


def test_a_checkpoints_corpus_meteor_from_summed_statistics_is_javas_eval_of_every_line(
    coco,
) -> None:
    from cobra_eval.metrics.meteor import MeteorProcess, pooled_line, stats_counts

    candidates, references = coco
    ids = list(candidates)[:600]

    def words(text: str) -> str:  # tokenized enough for METEOR's line protocol
        return " ".join(re.findall(r"[a-z0-9]+", text.lower()))

    refs = {i: [words(r) for r in references[i]] for i in ids}
    pairs = [(words(candidates[i]), refs[i]) for i in ids]
    # a caption equal to one of its references: one whole chunk, whose chunks EVAL leaves out
    pairs += [(refs[i][0], refs[i]) for i in ids[:100]]
    rng = random.Random(0)
    with MeteorProcess() as meteor:
        stats = meteor.stats_many(pairs)
        for n in (1, 2, 17, 350, len(stats)):
            subset = rng.sample(stats, n)
            assert pooled_line([stats_counts(line) or b"" for line in subset]) is not None
            assert meteor.corpus(subset) == meteor.evaluate(subset)[0], n
        # statistics that are not counts are scored by Java line by line, as before
        fractional = [stats[0].replace(".0", ".5", 1), *stats[1:50]]
        assert stats_counts(fractional[0]) is None
        assert meteor.corpus(fractional) == meteor.evaluate(fractional)[0]
        # its paraphrase table loaded in about 600 MiB (with the JVM's default collector
        # the process grew past 1 GiB): what a user plans beside the model
        assert meteor.pid is not None
        assert peak_mib(meteor.pid) < 900


def peak_mib(pid: int) -> int:
    """A running process's peak resident memory (Linux's VmHWM), MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) // 1024  # type: ignore[index]
