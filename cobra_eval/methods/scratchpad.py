"""scratchpad: think in a scratchpad first, then give the caption after a marker."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from cobra_eval.methods.base import MethodOutput, ParsedOutput, PassOutput
from cobra_eval.methods.parsing import first_line, nonempty_lines, strip_label
from cobra_eval.methods.prompts import merge_prompts
from cobra_eval.methods.registry import register_method

PROMPTS_VERSION = 1
MARKER = "Caption:"
PROMPT = (
    "First, write a short scratchpad listing the objects in the image, their attributes "
    f"and how they relate. Then write the final one-sentence caption on a line starting "
    f"with '{MARKER}'."
)


#: "Caption:" in any case, also as markdown ("**Caption:**") or a heading ("## Caption").
MARKER_RE = re.compile(
    r"(?:final\s+)?caption\s*\**\s*[:：]|^[ \t]*#+[ \t]*(?:final[ \t]+)?caption[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)


def parse_after_marker(raw: str) -> ParsedOutput:
    """Caption after the last marker that has text after it; the text before is the reasoning.

    No marker: the last line (without a 'Label:') is the caption, status
    fallback:no_marker. Only empty markers: status empty. A later marker with
    nothing after it (cut off at max_new_tokens) falls back to an earlier one.
    """
    markers = list(MARKER_RE.finditer(raw))
    for k, mark in enumerate(reversed(markers)):
        caption = first_line(raw[mark.end() :])
        if caption:
            status = "ok" if k == 0 else "fallback:empty_last_marker"
            return ParsedOutput(
                caption=caption, reasoning=raw[: mark.start()].strip(), parse_status=status
            )
    if markers:
        return ParsedOutput(caption="", reasoning=raw[: markers[0].start()].strip(),
                            parse_status="empty")  # fmt: skip
    lines = nonempty_lines(raw)
    if not lines:
        return ParsedOutput(caption="", parse_status="empty")
    return ParsedOutput(
        caption=strip_label(lines[-1], any_label=True),
        reasoning="\n".join(lines[:-1]),
        parse_status="fallback:no_marker",
    )


@register_method("scratchpad")
class Scratchpad:
    """Scratchpad reasoning, then a caption after the last marker."""

    name: str = "scratchpad"
    pass_names: tuple[str, ...] = ("scratchpad",)

    def __init__(self, prompts: Mapping[str, str] | None = None):
        self.prompts = merge_prompts(self.name, {"scratchpad": PROMPT}, prompts)

    def config(self) -> dict[str, Any]:
        """Prompt and marker."""
        return {"prompts": self.prompts, "prompts_version": PROMPTS_VERSION, "marker": MARKER}

    def build_prompt(self, pass_name: str, previous: Sequence[PassOutput]) -> str:
        """The scratchpad prompt."""
        return self.prompts["scratchpad"]

    def parse(self, pass_name: str, raw: str) -> ParsedOutput:
        """Caption after the last marker; see parse_after_marker."""
        return parse_after_marker(raw)

    def finalize(self, passes: Sequence[PassOutput]) -> MethodOutput:
        """The single pass gives caption and scratchpad."""
        only = passes[-1]
        return MethodOutput(
            generated_caption=only.caption,
            reasoning_trace=only.reasoning,
            metadata={"parse_status": only.parse_status},
        )
