"""METEOR's paraphrase table cut down to the entries a set of references can match.

METEOR 1.5 loads its whole paraphrase table (5.3 million entries, 62 MB of gzip)
before it answers anything: about 10 seconds of one core, every time its JVM
starts. A run knows its references before it scores anything, and the entries
that can never match them change nothing, so the JVM is started on a table
(``-a``) of the others. The scores are the same; ``tests/test_paraphrases.py``
compares the statistics lines with the whole table's on real COCO captions.

Why no score changes (from METEOR's ``ParaphraseTransducer`` and
``ParaphraseMatcher``, whose bytecode in pycocoevalcap's jar reads as below):

- An entry is three lines: a number METEOR reads and ignores, then a phrase and
  its paraphrase, each split into words as ``StringTokenizer`` splits them.
- An entry makes a match only where one of its two phrases occurs, word for word,
  in one of the two lines being aligned and the other phrase in the other line.
  Every alignment METEOR makes pairs the hypothesis with one reference, so one
  of the entry's phrases must occur in a reference, as METEOR sees it: the text
  between ``|||`` separators, normalized as METEOR's ``-norm`` normalizes it
  (``meteor_text``: its own ``Normalizer`` wherever Python's is not exact) and
  lower-cased. An entry neither of whose phrases occurs in any
  reference never matches anything; it is left out. An empty phrase occurs
  everywhere, so such entries stay.
- The entries kept stay in the table's order, so METEOR finds the same matches
  in the same order. Word numbers differ, but METEOR only compares them.
- A phrase is kept when a 64-bit hash of its words is among the hashes of the
  references' word n-grams: a collision keeps an entry that could not match
  (harmless), and a phrase that occurs is never left out.

- Words are split where Java splits them, and lower-cased as Java does wherever
  the result is ASCII; every phrase with a word that is not ASCII is kept (see
  ``reference_ngrams``).

References with a line break use the whole table, as does anything unexpected: a
failure here costs time, never a score. The table is read once into an index in the
cache (``COBRA_EVAL_CACHE``), built in a child process (it needs a few hundred MB).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import itertools
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cobra_eval.metrics.corpus import pycocoevalcap_dir
from cobra_eval.metrics.meteor_text import JAVA_TRIMMED, MeteorNormalizer
from cobra_eval.metrics.ptb import cache_base

#: Bump when the index's files or their meaning change.
INDEX_VERSION = 2
#: Seconds the index build (a child process reading the 62 MB table) may take.
BUILD_TIMEOUT_S = 600
#: References normalized and hashed at a time (never all held at once).
NORMALIZE_CHUNK = 50_000
#: Entries of the cut table turned into text at a time.
WRITE_BLOCK = 65_536
_MULTIPLIER = 0x9E3779B97F4A7C15

#: StringTokenizer's word breaks
_JAVA_SPACE = re.compile("[ \t\n\r\f]+")

_log = logging.getLogger(__name__)


class IndexUnsupported(ValueError):
    """The table has bytes whose line or word breaks Python would read unlike METEOR."""


def source_table() -> Path:
    """The paraphrase table METEOR loads by default for English."""
    return pycocoevalcap_dir() / "meteor" / "data" / "paraphrase-en.gz"


@dataclass
class PhraseIndex:
    """The table's distinct phrases (as word numbers) and its entries (as phrase numbers)."""

    words: list[bytes]
    #: every phrase's words, one phrase after another, and each phrase's length
    phrase_words: np.ndarray
    phrase_lengths: np.ndarray
    #: per entry, in the table's order: its phrase and its paraphrase
    left: np.ndarray
    right: np.ndarray
    #: the phrases' hashes in ascending order, and the phrase each one is
    sorted_hashes: np.ndarray
    hash_phrases: np.ndarray
    #: the phrases with a word that is not ASCII (always kept: see reference_ngrams)
    wide_phrases: np.ndarray

    @classmethod
    def load(cls, folder: Path) -> PhraseIndex:
        # mapped, not read: a cut touches a fraction of the phrases
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
        return cls(words=(folder / "words.bin").read_bytes().split(b"\n"), **arrays)

    def save(self, folder: Path) -> None:
        (folder / "words.bin").write_bytes(b"\n".join(self.words))
        for name in _ARRAYS:
            np.save(folder / f"{name}.npy", getattr(self, name))

    @functools.cached_property
    def longest(self) -> int:
        return int(self.phrase_lengths.max()) if len(self.phrase_lengths) else 0

    @functools.cached_property
    def phrase_ends(self) -> np.ndarray:
        """Where each phrase's words end in phrase_words."""
        return np.cumsum(self.phrase_lengths, dtype=np.int64)

    def known(self, hashes: np.ndarray) -> np.ndarray:
        """Those of these hashes that some phrase of the table has (the rest can keep nothing)."""
        if not len(self.sorted_hashes):
            return hashes[:0]
        at = np.searchsorted(self.sorted_hashes, hashes)
        at[at == len(self.sorted_hashes)] = 0
        return hashes[self.sorted_hashes[at] == hashes]

    def kept(self, present_hashes: np.ndarray) -> np.ndarray:
        """The entries (ascending) one of whose phrases has one of these hashes, or is empty."""
        low = np.searchsorted(self.sorted_hashes, present_hashes, side="left")
        high = np.searchsorted(self.sorted_hashes, present_hashes, side="right")
        present = self.phrase_lengths == 0
        present[self.hash_phrases[_ranges(low, high - low)]] = True
        present[self.wide_phrases] = True
        return np.flatnonzero(present[self.left] | present[self.right])

    def write_entries(self, entries: np.ndarray, out: gzip.GzipFile) -> None:
        """Write the table's text of these entries, a block at a time (memory stays flat)."""
        pieces = [w + b" " for w in self.words] + [w + b"\n" for w in self.words]
        pieces += [b"0\n", b"\n"]
        for start in range(0, len(entries), WRITE_BLOCK):
            tokens = self._tokens(entries[start : start + WRITE_BLOCK])
            out.write(b"".join(map(pieces.__getitem__, tokens.tolist())))

    def _tokens(self, entries: np.ndarray) -> np.ndarray:
        """The text of these entries as numbers of write_entries' pieces (the first line of
        each, which METEOR ignores, as 0)."""
        # tokens: "word " for each word of a phrase but its last, "word\n" for that one,
        # "\n" for an empty phrase, "0\n" before each entry's first phrase
        n_words = len(self.words)
        ends = self.phrase_ends
        phrases = np.stack((self.left[entries], self.right[entries]), axis=1).ravel()
        lengths = self.phrase_lengths[phrases].astype(np.int64)
        words = self.phrase_words[_ranges(ends[phrases] - lengths, lengths)].astype(np.int64)
        words[np.cumsum(lengths)[lengths > 0] - 1] += n_words
        opens = np.arange(len(phrases)) % 2 == 0
        empty = lengths == 0
        slots = np.maximum(lengths, 1) + opens
        first = np.cumsum(slots) - slots
        body = first + opens
        tokens = np.empty(int(slots.sum()), dtype=np.int64)
        tokens[first[opens]] = 2 * n_words
        tokens[body[empty]] = 2 * n_words + 1
        tokens[_ranges(body, lengths)] = words
        return tokens


_ARRAYS = (
    "phrase_words",
    "phrase_lengths",
    "left",
    "right",
    "sorted_hashes",
    "hash_phrases",
    "wide_phrases",
)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices start, start + 1, ... of each (start, length), one range after another."""
    lengths = lengths.astype(np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts.astype(np.int64) - offsets, lengths) + np.arange(int(lengths.sum()))


def phrase_hashes(word_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each word sequence (word numbers, one sequence after another)."""
    ends = np.cumsum(lengths, dtype=np.int64)
    starts = ends - lengths.astype(np.int64)
    position = np.arange(len(word_ids), dtype=np.int64) - np.repeat(starts, lengths)
    powers = np.array(_powers(int(lengths.max()) if len(lengths) else 0), dtype=np.uint64)
    terms = (word_ids.astype(np.uint64) + np.uint64(1)) * powers[position]
    running = np.concatenate((np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)))
    # differences of the running sum wrap modulo 2**64 as the sums do
    sums: np.ndarray = running[ends] - running[starts]
    return sums + lengths.astype(np.uint64)


def ngram_hashes(lines: Iterable[list[int]], longest: int) -> np.ndarray:
    """The hashes (as phrase_hashes makes them) of every n-gram up to longest words of
    each line of word numbers; an n-gram with an unknown word (-1) has none."""
    joined: list[int] = []
    for line in lines:
        joined += line
        joined.append(-1)
    ids = np.array(joined, dtype=np.int64)
    powers = np.array(_powers(longest), dtype=np.uint64)
    known = ids >= 0
    words = np.where(known, ids, 0).astype(np.uint64) + np.uint64(1)
    found: list[np.ndarray] = []
    total = np.zeros(len(ids), dtype=np.uint64)
    valid = np.ones(len(ids), dtype=bool)
    for n in range(1, longest + 1):
        # total[i] / valid[i]: the n words from i on
        total = total[:-1] if n > 1 else total
        valid = valid[:-1] if n > 1 else valid
        total = total + words[n - 1 :] * powers[n - 1]
        valid = valid & known[n - 1 :]
        found.append(np.unique(total[valid] + np.uint64(n)))
    return np.unique(np.concatenate(found)) if found else np.zeros(0, np.uint64)


def _powers(longest: int) -> list[int]:
    return [pow(_MULTIPLIER, k + 1, 1 << 64) for k in range(longest)]


def build_index(source: Path) -> PhraseIndex:
    """Read METEOR's paraphrase table into a PhraseIndex (a few hundred MB, ~15 s)."""
    phrase_ids: dict[bytes, int] = {}
    left, right = array("I"), array("I")
    count = 0  # lines read so far: line g of the table is an entry's (g % 3)th line
    rest = b""
    with gzip.open(source, "rb") as table:
        while True:
            chunk = table.read(1 << 24)
            # Java's readLine also ends a line at \r; StringTokenizer does not split at
            # \x0b, bytes.split does: tables with either are not indexed
            if b"\r" in chunk or b"\x0b" in chunk:
                raise IndexUnsupported(f"{source} has \\r or \\x0b bytes")
            if chunk:
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()  # a partial line
            else:
                # a last line without a line break is a line to Java too
                lines, rest = ([rest] if rest else []), b""
            for offset, ids in ((1, left), (2, right)):
                ids.extend(phrase_ids.setdefault(line, len(phrase_ids))
                           for line in lines[(offset - count) % 3 :: 3])  # fmt: skip
            count += len(lines)
            if not chunk:
                break
    if count % 3:
        raise IndexUnsupported(f"{source} ends inside an entry")
    word_ids: dict[bytes, int] = {}
    lengths = np.empty(len(phrase_ids), dtype=np.uint16)
    flat = array("I")
    for k, phrase in enumerate(phrase_ids):
        words = phrase.split()
        if len(words) > 0xFFFF:
            raise IndexUnsupported("a phrase of more than 65,535 words")
        lengths[k] = len(words)
        flat.extend(word_ids.setdefault(w, len(word_ids)) for w in words)
    if any(b"\n" in w for w in word_ids):
        raise IndexUnsupported("a word holds a line break")
    phrase_words = np.frombuffer(flat, dtype=np.uint32)
    wide_words = np.array([not w.isascii() for w in word_ids], dtype=bool)
    wide = np.zeros(len(lengths), dtype=bool)
    wide[np.repeat(np.arange(len(lengths)), lengths)[wide_words[phrase_words]]] = True
    hashes = phrase_hashes(phrase_words, lengths)
    order = np.argsort(hashes, kind="stable").astype(np.uint32)
    return PhraseIndex(
        words=list(word_ids),
        phrase_words=phrase_words.astype(np.uint16 if len(word_ids) <= 0x10000 else np.uint32),
        phrase_lengths=lengths,
        left=np.frombuffer(left, dtype=np.uint32).copy(),
        right=np.frombuffer(right, dtype=np.uint32).copy(),
        sorted_hashes=hashes[order],
        hash_phrases=order,
        wide_phrases=np.flatnonzero(wide).astype(np.uint32),
    )


def index_folder(source: Path | None = None) -> Path:
    """Where the index of this table lives in the cache (keyed by its size and time)."""
    source = source or source_table()
    stat = source.stat()
    key = f"{INDEX_VERSION}:{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_base() / "meteor-paraphrases" / digest


def ensure_index(source: Path | None = None) -> Path:
    """The index folder of this table, built by a child process on first use.

    Built into a temporary folder and renamed into place, so concurrent builders
    never see half an index.
    """
    source = source or source_table()
    target = index_folder(source)
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cobra_eval.metrics.paraphrases", str(source), str(tmp)],
            capture_output=True, timeout=BUILD_TIMEOUT_S,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode(errors="replace")[-2000:])
        try:
            os.rename(tmp, target)
        except OSError:
            # another process renamed its build into place first: use that one
            if not _complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(folder: Path) -> bool:
    return (folder / "words.bin").is_file() and all(
        (folder / f"{name}.npy").is_file() for name in _ARRAYS
    )


def reference_pieces(references: Iterable[str]) -> list[str] | None:
    """The texts METEOR aligns against (split at '|||', trimmed as Java trims); None if a
    reference holds a line break (the normalizer reads a line at a time)."""
    pieces: list[str] = []
    for reference in references:
        if "\n" in reference or "\r" in reference:
            return None
        pieces += (piece.strip(JAVA_TRIMMED) for piece in reference.split("|||"))
    return pieces


def reference_ngrams(
    references: Iterable[str], index: PhraseIndex, normalizer: MeteorNormalizer
) -> np.ndarray | None:
    """The hashes of the references' n-grams (as METEOR sees them) that are phrases of the
    table, ascending (None: see reference_pieces). A chunk of references at a time, of
    whose n-grams only the table's phrases are kept, so that neither a 100,000-image
    run's half a million references nor their tens of millions of n-grams are ever all
    held at once (40,504 COCO images' cut peaked 130 MiB higher when every n-gram was).

    METEOR lower-cases in Java and splits words as StringTokenizer does. Python
    lower-cases every word that is ASCII, or that becomes ASCII, as Java does; a word
    that does not may be lower-cased differently, but every phrase of the table with
    such a word is kept whatever the references hold (PhraseIndex.wide_phrases).
    """
    number = {word: k for k, word in enumerate(index.words)}
    found: list[np.ndarray] = []
    references = iter(references)
    while chunk := list(itertools.islice(references, NORMALIZE_CHUNK)):
        pieces = reference_pieces(chunk)
        if pieces is None:
            return None
        lines = (
            [number.get(word.encode(), -1) for word in _JAVA_SPACE.split(text.lower()) if word]
            for text in normalizer.normalize(pieces)
        )
        found.append(index.known(ngram_hashes(lines, index.longest)))
    return np.unique(np.concatenate(found)) if found else np.zeros(0, np.uint64)


def cut_table(
    references: Iterable[str],
    target: Path,
    source: Path | None = None,
    normalizer: MeteorNormalizer | None = None,
) -> int | None:
    """Write to target (gzip) the entries of the table these references can match.

    references are the texts sent to METEOR as references (tokenized). Returns
    the number of entries written, or None where the whole table must be used.
    normalizer: the one METEOR's texts go through (None: one of its own, stopped after).
    """
    index = PhraseIndex.load(ensure_index(source))
    with contextlib.ExitStack() as stack:
        if normalizer is None:
            normalizer = stack.enter_context(MeteorNormalizer())
        present = reference_ngrams(references, index, normalizer)
    if present is None:
        return None
    entries = index.kept(present)
    with gzip.open(target, "wb", compresslevel=1) as out:
        index.write_entries(entries, out)
    return len(entries)


def cut_table_or_none(
    references: Iterable[str],
    target: Path,
    source: Path | None = None,
    normalizer: MeteorNormalizer | None = None,
) -> Path | None:
    """cut_table, or None (use the whole table) when it cannot be cut or anything fails."""
    try:
        return target if cut_table(references, target, source, normalizer) is not None else None
    except Exception as exc:  # a failure here must cost time, never the run
        _log.warning("METEOR loads its whole paraphrase table: %s: %s", type(exc).__name__, exc)
        return None


def _main(argv: list[str]) -> None:
    source, folder = Path(argv[0]), Path(argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    build_index(source).save(folder)


if __name__ == "__main__":
    _main(sys.argv[1:])
