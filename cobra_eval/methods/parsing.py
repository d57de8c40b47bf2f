"""Text clean-up shared by the methods' parsers."""

from __future__ import annotations

import re

_WS = re.compile(r"\s+")
_MARKDOWN = re.compile(r"[*_`#>]+")


def clean_caption(text: str) -> str:
    """One line of plain text: markdown marks, surrounding quotes and extra space removed."""
    text = _MARKDOWN.sub("", text)
    text = _WS.sub(" ", text).strip()
    return text.strip("\"'“”‘’ ").strip()


def first_sentence_line(text: str) -> str:
    """The first non-empty line of a generation, cleaned."""
    for line in text.splitlines():
        cleaned = clean_caption(line)
        if cleaned:
            return cleaned
    return ""
