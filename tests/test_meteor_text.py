"""Texts normalized before METEOR sees them score exactly as METEOR's own -norm scores them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cobra_eval.metrics.corpus import pycocoevalcap_dir
from cobra_eval.metrics.meteor import MeteorProcess, _score_line
from cobra_eval.metrics.meteor_text import MeteorNormalizer, meteor_jar
from cobra_eval.metrics.paraphrases import cut_table

# what the normalizer splits, joins, escapes or drops, and plain words around it
AWKWARD = [
    "a man 's t-shirt .",
    "a well-known dog , u.s. made.",
    "Mr. Smith went to the U.S. embassy , e.g. twice",
    "25,000 people ... and 3.5 more",
    "rock 'n' roll in the 1990's",
    "DOTMULTI and DOTDOTMULTI markers",
    "a -- b – c",
    "“quoted” and ‘single’ and `back`",
    "un CAFÉ au lait, 25\xa01/2 street",
    "a | b || c",
    "   spaces   around   ",
    "Upper Case Words",
    "",
]
PLAIN = ["a man riding a horse", "two  dogs  on 3 beds ", "", "   "]


def jars_normalizer(texts: list[str]) -> list[str]:
    """METEOR's own Normalizer (English, punctuation kept) run over the texts."""
    done = subprocess.run(
        ["java", "-Dfile.encoding=UTF-8", "-Dsun.stdout.encoding=UTF-8", "-cp",
         str(meteor_jar()), "edu.cmu.meteor.util.Normalizer", "en", "true"],
        input="".join(f"{t}\n" for t in texts).encode(), capture_output=True, check=True,
    )  # fmt: skip
    return done.stdout.decode().split("\n")[:-1]


def test_texts_are_normalized_as_meteors_own_normalizer_does() -> None:
    with MeteorNormalizer() as normalizer:
        assert normalizer.normalize(PLAIN) == jars_normalizer(PLAIN)
        # plain lower-case words need no JVM
        assert normalizer.pid is None
        texts = [*AWKWARD, *PLAIN]
        assert normalizer.normalize(texts) == jars_normalizer(texts)
        assert normalizer.pid is not None  # one JVM, kept for the next texts
        pid = normalizer.pid
        assert normalizer.normalize(AWKWARD[:2]) == jars_normalizer(AWKWARD[:2])
        assert normalizer.pid == pid
        with pytest.raises(ValueError, match="line break"):
            normalizer.normalize(["a\nb"])
    assert normalizer.pid is None


@pytest.mark.slow
def test_statistics_equal_meteor_run_with_norm_on_the_raw_text(tmp_path: Path) -> None:
    references = [AWKWARD[:3], AWKWARD[3:6], AWKWARD[6:9], [*AWKWARD[9:], "a man ||| a horse"]]
    hypotheses = ["a man's T-shirt.", "the 1990's -- rock", "", "Spaces Around ||| |"]
    pairs = list(zip(hypotheses, references, strict=True))
    table = tmp_path / "cut.gz"
    cut_table([r for refs in references for r in refs], table)
    # pycocoevalcap's way: the raw lines to a JVM started with -norm
    raw = subprocess.run(
        ["java", "-Duser.language=en", "-Duser.country=US", "-jar", "-Xmx2G", "meteor-1.5.jar",
         "-", "-", "-stdio", "-l", "en", "-norm", "-a", str(table)],
        input="".join(f"{_score_line(h, refs)}\n" for h, refs in pairs).encode(),
        cwd=pycocoevalcap_dir() / "meteor", capture_output=True, check=True,
    )  # fmt: skip
    expected = raw.stdout.decode().split("\n")[:-1]
    assert len(expected) == len(pairs)
    with MeteorProcess(table=table) as meteor:
        assert meteor.stats_many(pairs) == expected
        # and the normalization did matter: the same texts, not normalized, score otherwise
        meteor._normalizer.normalize = lambda texts: list(texts)  # type: ignore[method-assign]
        assert meteor.stats_many(pairs) != expected
