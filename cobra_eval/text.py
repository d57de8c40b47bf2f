"""Text every writer accepts: no lone UTF-16 surrogates.

JSON can escape half of a surrogate pair ("\\ud83d" alone), and Python decodes it
to a str that no UTF-8 writer takes: not the database, not the tokenizer's
input, not a results file. Model outputs are mended (U+FFFD in its place);
reference captions are refused before a run starts (they are the ground truth).
"""

from __future__ import annotations

import re

#: A UTF-16 surrogate code point alone in a str (a valid pair decodes to one code point).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogate(text: str) -> bool:
    """Whether text holds a code point that cannot be encoded as UTF-8."""
    return _LONE_SURROGATE.search(text) is not None


def mend(text: str) -> str:
    """text with each lone surrogate replaced by U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text)
