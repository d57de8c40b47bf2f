"""baseline: one plain captioning prompt."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cobra_eval.methods.base import MethodOutput, ParsedOutput, PassOutput
from cobra_eval.methods.parsing import first_line
from cobra_eval.methods.prompts import merge_prompts
from cobra_eval.methods.registry import register_method

PROMPT = "Describe this image in one sentence."
PROMPTS_VERSION = 1


@register_method("baseline")
class Baseline:
    """A single caption, no reasoning."""

    name: str = "baseline"
    pass_names: tuple[str, ...] = ("caption",)

    def __init__(self, prompts: Mapping[str, str] | None = None):
        self.prompts = merge_prompts(self.name, {"caption": PROMPT}, prompts)

    def config(self) -> dict[str, Any]:
        """The prompt is the whole configuration."""
        return {"prompts": self.prompts, "prompts_version": PROMPTS_VERSION}

    def build_prompt(self, pass_name: str, previous: Sequence[PassOutput]) -> str:
        """The caption prompt."""
        return self.prompts["caption"]

    def parse(self, pass_name: str, raw: str) -> ParsedOutput:
        """The first line that says something is the caption (a leading label removed)."""
        caption = first_line(raw)
        return ParsedOutput(caption=caption, parse_status="ok" if caption else "empty")

    def finalize(self, passes: Sequence[PassOutput]) -> MethodOutput:
        """The only pass is the answer."""
        only = passes[-1]
        return MethodOutput(
            generated_caption=only.caption, metadata={"parse_status": only.parse_status}
        )
