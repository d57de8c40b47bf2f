"""llava_cot: LLaVA-CoT staged reasoning; the caption is the <CONCLUSION>."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from cobra_eval.methods.base import MethodOutput, ParsedOutput, PassOutput
from cobra_eval.methods.parsing import first_line, nonempty_lines, strip_label
from cobra_eval.methods.prompts import merge_prompts
from cobra_eval.methods.registry import register_method

PROMPTS_VERSION = 1
STAGES = ("SUMMARY", "CAPTION", "REASONING", "CONCLUSION")
QUESTION = "Describe this image in one sentence."
#: The public LLaVA-CoT format instruction, for models not fine-tuned on the format.
FORMAT_INSTRUCTION = (
    "I have an image and a question that I want you to answer. I need you to strictly follow "
    "the format with four specific sections: SUMMARY, CAPTION, REASONING, and CONCLUSION. It "
    "is crucial that you adhere to this structure exactly as outlined. To explain further: In "
    "SUMMARY, briefly explain what steps you'll take to solve the problem. In CAPTION, describe "
    "the contents of the image, specifically focusing on details relevant to the question. In "
    "REASONING, outline a step-by-step thought process you would use to solve the problem based "
    "on the image. In CONCLUSION, give the final answer in a direct format. Here's how the "
    "format should look: <SUMMARY> [Summarize how you will approach the problem.] </SUMMARY> "
    "<CAPTION> [Describe the image.] </CAPTION> <REASONING> [Reason step by step.] "
    "</REASONING> <CONCLUSION> [The final answer.] </CONCLUSION>"
)
_TAG = re.compile(r"<\s*(/?)\s*(SUMMARY|CAPTION|REASONING|CONCLUSION)\s*>", re.IGNORECASE)
#: Stage names written as labels instead of tags ("**Conclusion:** ...", "CONCLUSION - ...").
_STAGE_LABEL = re.compile(
    r"^[\s*#]*(SUMMARY|CAPTION|REASONING|CONCLUSION)[\s*]*[:：\-–][\s*]*(.*)$",
    re.IGNORECASE | re.MULTILINE,
)


def build_prompt(
    use_format_instruction: bool = True,
    instruction: str = FORMAT_INSTRUCTION,
    question: str = QUESTION,
) -> str:
    """The llava_cot prompt: the question, after the format instruction unless switched off."""
    if not use_format_instruction:
        return question
    return f"{instruction}\nQuestion: {question}"


def split_stages(text: str) -> tuple[dict[str, str], list[str]]:
    """Stage texts by tag (unclosed stages run to the next tag or the end) and problems found."""
    stages: dict[str, str] = {}
    problems: list[str] = []
    marks = list(_TAG.finditer(text))
    for k, mark in enumerate(marks):
        closing, name = mark.group(1) == "/", mark.group(2).upper()
        if closing:
            continue
        end = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        nxt = marks[k + 1] if k + 1 < len(marks) else None
        if nxt is None or nxt.group(2).upper() != name or nxt.group(1) != "/":
            problems.append(f"unclosed_{name.lower()}")
        if name in stages:
            problems.append(f"repeated_{name.lower()}")
        stages[name] = text[mark.end() : end].strip()
    return stages, problems


def parse_stages(raw: str) -> ParsedOutput:
    """Read a LLaVA-CoT answer; the caption is the conclusion.

    Fallbacks, in order: unclosed or repeated tags still give their stage text
    (status fallback:unclosed_conclusion, ...); stages written as labels
    ("Conclusion: ...", fallback:labels); the <CAPTION> stage
    (fallback:no_conclusion); the last line (fallback:no_tags); nothing (empty).
    """
    stages, problems = split_stages(raw)
    labelled = False
    if not stages:
        stages = {m.group(1).upper(): m.group(2).strip() for m in _STAGE_LABEL.finditer(raw)}
        labelled = bool(stages)
    reasoning = "\n".join(f"{k}: {stages[k]}" for k in STAGES[:3] if stages.get(k))
    details: dict[str, Any] = {"stages": stages}
    conclusion = first_line(stages.get("CONCLUSION", ""))
    if conclusion:
        if labelled:
            status = "fallback:labels"
        else:
            status = "fallback:" + ",".join(problems) if problems else "ok"
        return ParsedOutput(
            caption=conclusion, reasoning=reasoning, parse_status=status, details=details
        )
    described = first_line(stages.get("CAPTION", ""))
    if described:
        return ParsedOutput(
            caption=described,
            reasoning=reasoning,
            parse_status="fallback:no_conclusion",
            details=details,
        )
    lines = nonempty_lines(_TAG.sub("\n", raw))
    if not lines:
        return ParsedOutput(caption="", reasoning=reasoning, parse_status="empty", details=details)
    return ParsedOutput(
        caption=strip_label(lines[-1], any_label=True),
        reasoning=reasoning or "\n".join(lines[:-1]),
        parse_status="fallback:no_tags" if not stages else "fallback:no_conclusion",
        details=details,
    )


@register_method("llava_cot")
class LlavaCot:
    """Summary, caption, reasoning and conclusion stages; the conclusion is the caption."""

    name: str = "llava_cot"
    pass_names: tuple[str, ...] = ("llava_cot",)

    def __init__(
        self, prompts: Mapping[str, str] | None = None, use_format_instruction: bool = True
    ):
        defaults = {"instruction": FORMAT_INSTRUCTION, "question": QUESTION}
        self.prompts = merge_prompts(self.name, defaults, prompts)
        self.use_format_instruction = use_format_instruction

    def config(self) -> dict[str, Any]:
        """The prompt as sent, its templates, and whether the format instruction is used."""
        return {
            "prompts": {"llava_cot": self._prompt()},
            "templates": self.prompts,
            "prompts_version": PROMPTS_VERSION,
            "format_instruction": self.use_format_instruction,
        }

    def _prompt(self) -> str:
        return build_prompt(
            self.use_format_instruction, self.prompts["instruction"], self.prompts["question"]
        )

    def build_prompt(self, pass_name: str, previous: Sequence[PassOutput]) -> str:
        """The staged-reasoning prompt."""
        return self._prompt()

    def parse(self, pass_name: str, raw: str) -> ParsedOutput:
        """Caption from <CONCLUSION>; see parse_stages for the fallbacks."""
        return parse_stages(raw)

    def finalize(self, passes: Sequence[PassOutput]) -> MethodOutput:
        """Caption from the conclusion, the earlier stages as the reasoning trace."""
        only = passes[-1]
        return MethodOutput(
            generated_caption=only.caption,
            reasoning_trace=only.reasoning,
            metadata={"parse_status": only.parse_status, "stages": only.details.get("stages", {})},
        )
