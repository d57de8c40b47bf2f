"""Metric costs on real COCO captions (references from the SPICE jar, offline).

    python -m benchmarks.metric_cost [--images 5000] [--repeats 3]

1. Per-sample scoring as a run does it (batches of 16, BLEU + ROUGE-L + CIDEr-D,
   one PTB tokenizer call per batch): milliseconds per sample; and the scoring
   alone (already tokenized text, no Java).
2. Corpus scores at a checkpoint, pooled from the per-sample statistics of the
   samples scored in 1 (no Java): milliseconds per checkpoint.
3. Corpus scoring of N captions (Java-free metrics after PTB tokenization) with
   cobra_eval's `score_corpus` against pycocoevalcap's own pipeline on the same
   input, and whether the scores are identical; then the split per metric on the
   same tokenized input (pycocoevalcap's scorers against `coco_scorers`), with the
   PTB tokenization time of `score_corpus` for reference.
4. METEOR's corpus score at a checkpoint of 1,000 and N samples: one ``EVAL`` of
   the summed statistics (what a run sends) against an ``EVAL`` of every
   sample's line (what pycocoevalcap sends), and whether the scores are identical.
   A run parses each sample's line once as it lands; that is not timed here.
5. METEOR's JVM from start to a corpus score of 1,000 captions (statistics a batch
   of 16 at a time, as a run asks, then one ``EVAL``), as a run starts it (its
   paraphrase table cut to the references), as cobra_eval starts it on the whole
   table, and as pycocoevalcap's ``Meteor`` does (a line at a time), alternating:
   the CPU seconds (on the whole table most of it is loading that table; with the
   cut, the cut's own CPU counts too), the JVM's peak resident memory (read from
   /proc just before it is stopped), and whether the scores are identical.
6. The paraphrase table's cut for 1,000, 5,000 and every val2014 image's references
   (PTB-tokenized, as a run sends them), in a fresh process each, as a run makes it
   in its own process: seconds, entries kept, and the process's peak resident
   memory above its resident memory just before (the peak is reset then), which
   counts the table's index pages it maps (file-backed: shared and reclaimable).
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.run_memory import status_kib
from benchmarks.run_overhead import cpu_seconds
from cobra_eval.metrics import coco_scorers
from cobra_eval.metrics.corpus import ptb_tokenize, real_coco_captions, score_corpus
from cobra_eval.metrics.meteor import MeteorProcess, stats_counts
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


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return times, result


def spread(times: list[float], unit: str = "s", scale: float = 1.0) -> str:
    t = [x * scale for x in times]
    return f"median {statistics.median(t):.2f} {unit} (min {min(t):.2f}, max {max(t):.2f})"


def as_floats(result: tuple[Any, Any]) -> tuple[list[float], list[list[float]]]:
    """(corpus, per-image) of any scorer as plain floats, so == compares every bit."""
    corpus, per_image = result
    if isinstance(corpus, list):  # BLEU: four corpus scores and four per-image lists
        return [float(c) for c in corpus], [[float(s) for s in p] for p in per_image]
    return [float(corpus)], [[float(s) for s in per_image]]


def per_metric(candidates: dict[int, str], references: dict[int, list[str]], repeats: int) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    def tokenize() -> tuple[dict[Any, list[str]], dict[Any, list[str]]]:
        return ptb_tokenize({i: [c] for i, c in candidates.items()}), ptb_tokenize(references)

    tok_t, (res, gts) = timed(tokenize, repeats)
    print(f"  PTB tokenization in score_corpus (2 calls): {spread(tok_t)}")
    pairs: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        ("BLEU-1..4", lambda: Bleu(4).compute_score(gts, res, verbose=0),
         lambda: coco_scorers.bleu(gts, res)),
        ("ROUGE-L", lambda: Rouge().compute_score(gts, res), lambda: coco_scorers.rouge(gts, res)),
        ("CIDEr-D", lambda: Cider().compute_score(gts, res), lambda: coco_scorers.cider(gts, res)),
    ]  # fmt: skip
    for name, theirs_fn, ours_fn in pairs:
        theirs_t, theirs = timed(theirs_fn, repeats)
        ours_t, ours = timed(ours_fn, repeats)
        ratio = statistics.median(ours_t) / statistics.median(theirs_t)
        print(
            f"  {name}: pycocoevalcap {spread(theirs_t)}; coco_scorers {spread(ours_t)}; "
            f"ratio {ratio:.2f}; identical corpus and per-image scores: "
            f"{as_floats(theirs) == as_floats(ours)}"
        )


def _evaluated(meteor: MeteorProcess, lines: list[str]) -> Any:
    """METEOR's corpus score of these statistics lines, by one EVAL of them all."""
    return meteor.evaluate(lines)[0]


def meteor_checkpoint(
    candidates: dict[int, str], references: dict[int, list[str]], repeats: int
) -> None:
    res = ptb_tokenize({i: [c] for i, c in candidates.items()})
    gts = ptb_tokenize(references)
    with MeteorProcess() as meteor:
        stats = meteor.stats_many([(res[i][0], gts[i]) for i in candidates])
        for n in sorted({min(1000, len(stats)), len(stats)}):
            lines = stats[:n]
            # a run parses each sample's line once, as it lands (CorpusPart.meteor_counts)
            counts = [stats_counts(line) for line in lines]
            every_t, every = timed(functools.partial(_evaluated, meteor, lines), repeats)
            summed_t, summed = timed(functools.partial(meteor.corpus, lines, counts), repeats)
            print(
                f"METEOR corpus score at a checkpoint of {n} samples: summed statistics "
                f"{spread(summed_t, 'ms', 1000)}; EVAL of every line "
                f"{spread(every_t, 'ms', 1000)}; identical: {summed == every}"
            )


def ours_meteor(
    res: dict[int, str], gts: dict[int, list[str]], *, cut: bool = True
) -> tuple[float, int, float]:
    """(CPU seconds, peak MiB, corpus METEOR) of cobra_eval's METEOR JVM over these captions:
    with cut, as a run starts it (its paraphrase table cut to the references: this
    process's CPU, the cut's, and METEOR's normalizer's are counted too); else on the
    whole table."""
    before = cpu_seconds(resource.RUSAGE_CHILDREN) + cpu_seconds(resource.RUSAGE_SELF)
    with MeteorProcess() as meteor:
        if cut:
            meteor.prepare(lambda: [ref for refs in gts.values() for ref in refs])
        pairs = [(res[i], gts[i]) for i in res]
        stats = [s for k in range(0, len(pairs), 16) for s in meteor.stats_many(pairs[k : k + 16])]
        score = meteor.evaluate(stats)[0]
        assert meteor.pid is not None
        peak = status_kib("VmHWM", meteor.pid) // 1024
    # the JVM's CPU is counted once it is stopped and waited for (closing does both)
    after = cpu_seconds(resource.RUSAGE_CHILDREN) + cpu_seconds(resource.RUSAGE_SELF)
    return after - before, peak, score


def their_meteor(res: dict[int, str], gts: dict[int, list[str]]) -> tuple[float, int, float]:
    """The same through pycocoevalcap's own Meteor class (its JVM, its flags)."""
    from pycocoevalcap.meteor.meteor import Meteor

    before = cpu_seconds(resource.RUSAGE_CHILDREN)
    meteor = Meteor()
    score = meteor.compute_score(gts, {i: [c] for i, c in res.items()})[0]
    peak = status_kib("VmHWM", meteor.meteor_p.pid) // 1024
    del meteor  # its __del__ kills the JVM and waits for it (its CPU is counted then)
    return cpu_seconds(resource.RUSAGE_CHILDREN) - before, peak, float(score)


def meteor_jvm(
    candidates: dict[int, str], references: dict[int, list[str]], repeats: int, n: int = 1000
) -> None:
    ids = list(candidates)[:n]
    tokenized = ptb_tokenize({i: [candidates[i]] for i in ids})
    res, gts = {i: tokenized[i][0] for i in ids}, ptb_tokenize({i: references[i] for i in ids})
    figures: dict[str, list[tuple[float, int, float]]] = {
        "cobra_eval (table cut to the references, as a run)": [],
        "cobra_eval on the whole table": [],
        "pycocoevalcap": [],
    }
    for _ in range(repeats):
        for name, runs in figures.items():
            if name == "pycocoevalcap":
                runs.append(their_meteor(res, gts))
            else:
                runs.append(ours_meteor(res, gts, cut="cut" in name))
    shown = []
    for name, runs in figures.items():
        cpu = spread([r[0] for r in runs], "s")
        peak = spread([float(r[1]) for r in runs], "MiB")
        shown.append(f"{name}: CPU {cpu}, peak memory {peak}")
    scores = {r[2] for runs in figures.values() for r in runs}
    print(f"METEOR's JVM, started and scoring {len(ids)} captions: {'; '.join(shown)}; "
          f"identical scores: {len(scores) == 1}")  # fmt: skip


# a fresh process's cut of the first n images' references: its seconds, entries, peak MiB
_CUT = """
import json, sys, time
from pathlib import Path
from cobra_eval.metrics.corpus import ptb_tokenize, real_coco_captions
from cobra_eval.metrics.paraphrases import cut_table, ensure_index
from benchmarks.run_memory import status_kib
captions = real_coco_captions()
ids = sorted(captions)[: int(sys.argv[1])]
tokenized = ptb_tokenize({i: captions[i] for i in ids})
references = [ref for i in ids for ref in tokenized[i]]
del captions, tokenized
ensure_index()
Path("/proc/self/clear_refs").write_text("5")  # the peak, from here on
before = status_kib("VmRSS")
started = time.perf_counter()
kept = cut_table(references, Path(sys.argv[2]))
print(json.dumps([len(ids), time.perf_counter() - started, kept,
                  (status_kib("VmHWM") - before) / 1024]))
"""


def meteor_cut(sizes: tuple[int, ...] = (1000, 5000, 1_000_000)) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shown = []
        for n in sizes:
            done = subprocess.run(
                [sys.executable, "-c", _CUT, str(n), str(Path(tmp) / "cut.gz")],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            images, seconds, kept, peak = json.loads(done.stdout.splitlines()[-1])
            shown.append(f"{images} images: {seconds:.2f} s, {kept} entries, peak +{peak:.0f} MiB")
    print(f"METEOR's paraphrase table cut to the references, in a run's process: "
          f"{'; '.join(shown)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per_sample_images", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    candidates, references = coco(args.images)
    items = list(candidates.items())[: args.per_sample_images]
    scorer = SampleScorer(references, GROUPS)
    # counted before any sample is scored, as a run counts them while its model loads
    assert scorer.document_frequency is not None

    def per_sample() -> list:
        scored = []
        for start in range(0, len(items), 16):
            scored += scorer.score(items[start : start + 16])
        return scored

    times, scored = timed(per_sample, args.repeats)
    print(
        f"per-sample scoring (BLEU, ROUGE-L, CIDEr-D; batches of 16, {len(items)} samples): "
        f"{spread([t / len(items) for t in times], 'ms/sample', 1000)}"
    )
    texts = ptb_tokenize({i: [c] for i, c in items})
    refs = ptb_tokenize({i: references[i] for i, _ in items})
    # the scoring alone (SampleScorer._one on tokenized text): what is left without Java
    alone_t, _ = timed(
        lambda: [scorer._one(i, texts[i][0], refs[i], None) for i, _ in items], args.repeats
    )
    print(
        f"  of which scoring alone: {spread([t / len(items) for t in alone_t], 'ms/sample', 1000)}"
    )
    pool_t, _ = timed(lambda: scorer.corpus(scored), args.repeats * 10)
    print(
        f"checkpoint corpus scores pooled from {len(scored)} scored samples (BLEU, ROUGE-L, "
        f"CIDEr-D): {spread(pool_t, 'ms', 1000)}"
    )
    scorer.close()

    ours_t, ours = timed(lambda: score_corpus(candidates, references, GROUPS).scores, args.repeats)
    theirs_t, theirs = timed(lambda: official(candidates, references), args.repeats)
    ratio = statistics.median(ours_t) / statistics.median(theirs_t)
    print(
        f"corpus scoring of {len(candidates)} captions: cobra_eval {spread(ours_t)}; "
        f"pycocoevalcap {spread(theirs_t)}; ratio {ratio:.2f}; identical scores: {ours == theirs}"
    )
    per_metric(candidates, references, args.repeats)
    meteor_checkpoint(candidates, references, args.repeats)
    meteor_jvm(candidates, references, args.repeats)
    meteor_cut()


if __name__ == "__main__":
    main()
