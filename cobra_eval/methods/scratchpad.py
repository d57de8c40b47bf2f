"""scratchpad: think in a scratchpad first, then give the caption after a marker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cobra_eval.methods.base import MethodOutput, ParsedOutput, PassOutput
from cobra_eval.methods.parsing import clean_caption, first_sentence_line
from cobra_eval.methods.prompts import merge_prompts
from cobra_eval.methods.registry import register_method

PROMPTS_VERSION = 1
MARKER = "Caption:"
PROMPT = (
    "First, write a short scratchpad listing the objects in the image, their attributes "
    f"and how they relate. Then write the final one-sentence caption on a line starting "
    f"with '{MARKER}'."
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
        """Caption after the last marker (case-insensitive); else the last line as a fallback."""
        lower = raw.lower()
        at = lower.rfind(MARKER.lower())
        if at >= 0:
            caption = first_sentence_line(raw[at + len(MARKER) :])
            reasoning = raw[:at].strip()
            if caption:
                return ParsedOutput(caption=caption, reasoning=reasoning)
            return ParsedOutput(caption="", reasoning=reasoning, parse_status="empty")
        lines = [clean_caption(line) for line in raw.splitlines() if clean_caption(line)]
        if not lines:
            return ParsedOutput(caption="", parse_status="empty")
        return ParsedOutput(
            caption=lines[-1],
            reasoning="\n".join(lines[:-1]),
            parse_status="fallback:no_marker",
        )

    def finalize(self, passes: Sequence[PassOutput]) -> MethodOutput:
        """The single pass gives caption and scratchpad."""
        only = passes[-1]
        return MethodOutput(
            generated_caption=only.caption,
            reasoning_trace=only.reasoning,
            metadata={"parse_status": only.parse_status},
        )
