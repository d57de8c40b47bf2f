"""Corpus-level COCO caption scores with the official pycocoevalcap scorers.

pycocoevalcap has sharp edges this module guards against: a line break inside
a caption shifts every later caption to the wrong image in the PTB tokenizer
and desynchronises METEOR's pipe; '|||' is METEOR's field separator; the
tokenizer writes its temp file into site-packages; METEOR leaves its lock held
(and the process hanging at exit) if it fails mid-call.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cobra_eval.errors import ConfigError
from cobra_eval.metrics import ptb

#: --metrics names -> the official result keys they produce.
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "bleu": ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"),
    "meteor": ("METEOR",),
    "rouge": ("ROUGE_L",),
    "cider": ("CIDEr",),
    "spice": ("SPICE",),
}
DEFAULT_METRICS = "bleu,meteor,rouge,cider,spice"
PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
                "-", "--", "...", ";"}  # fmt: skip
_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")
TOKENIZER_TIMEOUT_S = 300
#: Captions per tokenizer request (the identity test on COCO's 616k captions uses 20k).
TOKENIZE_CHUNK = 20_000


@dataclass
class CorpusScores:
    """Scores of one set of captions, and the metrics that could not be computed (with why)."""

    n: int
    scores: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)


def parse_metric_list(text: str) -> tuple[str, ...]:
    """'bleu,cider' -> ('bleu', 'cider'); 'none' -> (); 'all' -> every group."""
    text = text.strip().lower()
    if text in ("", "none"):
        return ()
    if text == "all":
        return tuple(METRIC_GROUPS)
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [n for n in names if n not in METRIC_GROUPS]
    if unknown:
        raise ConfigError(
            f"unknown metric {', '.join(unknown)}; choose from {', '.join(METRIC_GROUPS)}, "
            "'all' or 'none'"
        )
    return names


def sanitize(text: str) -> str:
    """One line, no METEOR separators: the scorers' input must never shift."""
    return " ".join(_BREAKS.sub(" ", text).replace("|||", " ").split())


def pycocoevalcap_dir() -> Path:
    # a namespace package (no __init__), so locate it through one of its modules
    from pycocoevalcap.bleu import bleu

    return Path(bleu.__file__).resolve().parent.parent


def real_coco_captions(split: str = "val2014") -> dict[int, list[str]]:
    """The real COCO captions (image id -> captions, in annotation order) from the SPICE jar.

    pycocoevalcap ships captions_val2014.json and captions_train2014.json inside
    spice-1.0.jar, so tests and benchmarks have real references offline.
    """
    import json
    import zipfile
    from collections import defaultdict

    jar = pycocoevalcap_dir() / "spice" / "spice-1.0.jar"
    with zipfile.ZipFile(jar) as archive:
        data = json.loads(archive.read(f"coco/annotations/captions_{split}.json"))
    captions: dict[int, list[str]] = defaultdict(list)
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        captions[int(ann["image_id"])].append(str(ann["caption"]))
    return dict(captions)


def spice_unavailable_reason() -> str | None:
    """Why SPICE cannot run here, or None when its Stanford CoreNLP models are present."""
    lib = pycocoevalcap_dir() / "spice" / "lib"
    missing = [
        name
        for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
        if not (lib / name).exists()
    ]
    if missing:
        return (
            f"SPICE needs {' and '.join(missing)} in {lib} (pycocoevalcap would download them; "
            "see the README to install them offline)"
        )
    return None


def ptb_tokenize(captions: Mapping[Any, Sequence[str]]) -> dict[Any, list[str]]:
    """The official PTB tokenization (Stanford CoreNLP 3.4.1), lower-cased, punctuation removed."""
    jar = pycocoevalcap_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    keys = [key for key, texts in captions.items() for _ in texts]
    lines = [sanitize(text) for texts in captions.values() for text in texts]
    # an empty line may vanish in the tokenizer's output and shift every later caption:
    # only non-empty lines go to Java, empty ones tokenize to ""
    sent = [k for k, line in enumerate(lines) if line]
    result: dict[Any, list[str]] = {key: [] for key in captions}
    if not sent:
        for key in keys:
            result[key].append("")
        return result
    tokenized = [""] * len(lines)
    # in chunks: a 100k-image plan's 500k references at once would need hundreds of MB
    # of request and reply text (-preserveLines tokenizes each line on its own)
    for start in range(0, len(sent), TOKENIZE_CHUNK):
        chunk = sent[start : start + TOKENIZE_CHUNK]
        # one long-lived JVM per process when it can (byte-identical output), else one per call
        out = ptb.tokenize_text("\n".join(lines[k] for k in chunk), jar, TOKENIZER_TIMEOUT_S)
        out_lines = out.rstrip("\n").split("\n")
        if len(out_lines) != len(chunk):
            raise ValueError(
                f"PTB tokenizer returned {len(out_lines)} lines for {len(chunk)} captions"
            )
        for k, line in zip(chunk, out_lines, strict=True):
            tokenized[k] = " ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)
    for key, text in zip(keys, tokenized, strict=True):
        result[key].append(text)
    return result


def score_corpus(
    candidates: Mapping[int, str],
    references: Mapping[int, Sequence[str]],
    metrics: Sequence[str] = tuple(METRIC_GROUPS),
) -> CorpusScores:
    """Corpus scores of candidates[i] against references[i], as COCOEvalCap computes them."""
    ids = [i for i in candidates if references.get(i)]
    out = CorpusScores(n=len(ids))
    if not ids or not metrics:
        return out
    if shutil.which("java") is None:
        for name in metrics:
            out.unavailable[name] = "Java is not installed (the COCO scorers need it)"
        return out
    res = ptb_tokenize({i: [candidates[i]] for i in ids})
    gts = ptb_tokenize({i: list(references[i]) for i in ids})
    for name in metrics:
        if name == "spice":
            reason = spice_unavailable_reason()
            if reason:
                out.unavailable[name] = reason
                continue
        try:
            out.scores.update(_score_group(name, gts, res))
        except (OSError, subprocess.SubprocessError, ValueError, RuntimeError) as exc:
            out.unavailable[name] = f"{type(exc).__name__}: {exc}"
    return out


def _score_group(
    name: str, gts: dict[Any, list[str]], res: dict[Any, list[str]]
) -> dict[str, float]:
    # BLEU, ROUGE-L and CIDEr-D: pycocoevalcap's arithmetic re-implemented (identical floats)
    from cobra_eval.metrics import coco_scorers

    if name == "bleu":
        score, _ = coco_scorers.bleu(gts, res)
        return dict(zip(METRIC_GROUPS["bleu"], (float(s) for s in score), strict=True))
    if name == "rouge":
        return {"ROUGE_L": float(coco_scorers.rouge(gts, res)[0])}
    if name == "cider":
        return {"CIDEr": float(coco_scorers.cider(gts, res)[0])}
    if name == "meteor":
        return {"METEOR": _meteor(gts, res)}
    if name == "spice":
        from pycocoevalcap.spice.spice import Spice

        return {"SPICE": float(Spice().compute_score(gts, res)[0])}
    raise ValueError(f"unknown metric group {name}")


def _meteor(gts: dict[Any, list[str]], res: dict[Any, list[str]]) -> float:
    from cobra_eval.metrics.meteor import MeteorProcess

    with MeteorProcess() as meteor:
        # on the paraphrase entries these references can match (the same scores, sooner)
        meteor.prepare(lambda: [ref for refs in gts.values() for ref in refs])
        return meteor.corpus(meteor.stats_many([(res[i][0], gts[i]) for i in gts]))
