"""Text clean-up shared by the methods' parsers: never raises, whatever a model wrote."""

from __future__ import annotations

import re

_WS = re.compile(r"\s+")
_MARKDOWN = re.compile(r"[*_`#>]+")
#: A leading "Caption:" / "Final answer -" style label in front of the caption itself.
_LABEL = re.compile(
    r"^\s*(?:the\s+)?(?:final\s+)?(?:caption|answer|description)\s*[:：\-–]\s*", re.IGNORECASE
)
#: Any short "Word:" label at the start of a line (scratchpad notes such as "Relation: ...").
_ANY_LABEL = re.compile(r"^\s*[A-Za-z][A-Za-z ]{0,20}[:：]\s+")
#: Lines that only announce what follows ("Here is a caption:", "Sure!").
_PREAMBLE = re.compile(r"(?:[:：]|^(?:sure|okay|ok|certainly)[.!]?)\s*$", re.IGNORECASE)


def clean_caption(text: str) -> str:
    """One line of plain text: markdown marks, surrounding quotes and extra space removed."""
    text = _MARKDOWN.sub("", text)
    text = _WS.sub(" ", text).strip()
    return text.strip("\"'“”‘’ ").strip()


def strip_label(text: str, *, any_label: bool = False) -> str:
    """Drop a leading 'Caption:' label (or, with any_label, any short 'Word:' label)."""
    stripped = _LABEL.sub("", text, count=1)
    if any_label and stripped == text:
        stripped = _ANY_LABEL.sub("", text, count=1)
    return clean_caption(stripped)


def nonempty_lines(text: str) -> list[str]:
    """The cleaned, non-empty lines of a text."""
    return [line for line in (clean_caption(raw) for raw in text.splitlines()) if line]


def first_line(text: str) -> str:
    """The first line that says something, without a leading label; '' if there is none.

    A line that only announces the caption ("Here is a caption:") is skipped when
    another line follows it.
    """
    lines = nonempty_lines(text)
    for k, line in enumerate(lines):
        if _PREAMBLE.search(line) and k + 1 < len(lines):
            continue
        caption = strip_label(line)
        if caption:
            return caption
    return ""
