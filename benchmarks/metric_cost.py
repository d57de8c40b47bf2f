"""Metric costs on real COCO captions (references from the SPICE jar, offline).

    python -m benchmarks.metric_cost [--images 5000] [--repeats 3]

1. Per-sample scoring as a run does it (batches of 16, BLEU + ROUGE-L + CIDEr-D,
   one PTB tokenizer call per batch): milliseconds per sample.
2. Corpus scores at a checkpoint, pooled from the per-sample statistics of the
   samples scored in 1 (no Java): milliseconds per checkpoint.
3. Corpus scoring of N captions (Java-free metrics after PTB tokenization) with
   cobra_eval's `score_corpus` against pycocoevalcap's own pipeline on the same
   input, and whether the scores are identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

from cobra_eval.metrics.corpus import real_coco_captions, score_corpus
from cobra_eval.metrics.per_sample import SampleScorer

GROUPS = ("bleu", "rouge", "cider")


def coco(n: int) -> tuple[dict[int, str], dict[int, list[str]]]:
    captions = real_coco_captions()
    ids = sorted(captions)[:n]
    return {i: captions[i][0] for i in ids}, {i: captions[i][1:] for i in ids}


def official(candidates: dict[int, str], references: dict[int, list[str]]) -> dict[str, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in r] for i, r in references.items()})
    res = tok.tokenize({i: [{"caption": c}] for i, c in candidates.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"Bleu_{n + 1}": float(bleu[n]) for n in range(4)}
    out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return out


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per_sample_images", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    candidates, references = coco(args.images)
    items = list(candidates.items())[: args.per_sample_images]
    scorer = SampleScorer(references, GROUPS)

    def per_sample() -> list:
        scored = []
        for start in range(0, len(items), 16):
            scored += scorer.score(items[start : start + 16])
        return scored

    times, scored = timed(per_sample, args.repeats)
    per = [t / len(items) * 1000 for t in times]
    print(
        f"per-sample scoring (BLEU, ROUGE-L, CIDEr-D; batches of 16, {len(items)} samples): "
        f"median {statistics.median(per):.2f} ms/sample "
        f"(min {min(per):.2f}, max {max(per):.2f})"
    )
    pool_t, _ = timed(lambda: scorer.corpus(scored), args.repeats * 10)
    pool = [t * 1000 for t in pool_t]
    print(
        f"checkpoint corpus scores pooled from {len(scored)} scored samples (BLEU, ROUGE-L, "
        f"CIDEr-D): median {statistics.median(pool):.2f} ms "
        f"(min {min(pool):.2f}, max {max(pool):.2f})"
    )
    scorer.close()

    ours_t, ours = timed(lambda: score_corpus(candidates, references, GROUPS).scores, args.repeats)
    theirs_t, theirs = timed(lambda: official(candidates, references), args.repeats)
    same = ours == theirs
    ratio = statistics.median(ours_t) / statistics.median(theirs_t)
    print(
        f"corpus scoring of {len(candidates)} captions: cobra_eval median "
        f"{statistics.median(ours_t):.2f} s (min {min(ours_t):.2f}, max {max(ours_t):.2f}); "
        f"pycocoevalcap median {statistics.median(theirs_t):.2f} s "
        f"(min {min(theirs_t):.2f}, max {max(theirs_t):.2f}); ratio {ratio:.2f}; "
        f"identical scores: {same}"
    )


if __name__ == "__main__":
    main()
