"""scratchpad_compare: a direct caption, a scratchpad caption, and a refinement of both."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cobra_eval.methods import baseline, scratchpad
from cobra_eval.methods.base import MethodOutput, ParsedOutput, PassOutput
from cobra_eval.methods.prompts import merge_prompts
from cobra_eval.methods.registry import register_method

PROMPTS_VERSION = 1
REFINE_TEMPLATE = (
    "Draft caption: {draft}\nScratchpad: {scratchpad}\nUsing the image and the scratchpad, "
    "correct the draft caption. Write the final one-sentence caption on a line starting with "
    "'Caption:'."
)


def refine_prompt(draft: str, notes: str, template: str = REFINE_TEMPLATE) -> str:
    """The refinement prompt for a draft caption and a scratchpad."""
    flat = " ".join(notes.split()) or "(none)"
    # replace, not str.format: a user's template may contain other braces
    return template.replace("{draft}", draft or "(none)").replace("{scratchpad}", flat)


@register_method("scratchpad_compare")
class ScratchpadCompare:
    """Three passes per image; every pass is stored, the refinement is the caption."""

    name: str = "scratchpad_compare"
    pass_names: tuple[str, ...] = ("direct", "scratchpad", "refine")

    def __init__(self, prompts: Mapping[str, str] | None = None) -> None:
        defaults = {
            "direct": baseline.PROMPT,
            "scratchpad": scratchpad.PROMPT,
            "refine": REFINE_TEMPLATE,
        }
        self.prompts = merge_prompts(
            self.name, defaults, prompts, placeholders={"refine": ("draft", "scratchpad")}
        )
        self._direct = baseline.Baseline()
        self._scratch = scratchpad.Scratchpad()

    def config(self) -> dict[str, Any]:
        """Prompts of the three passes."""
        return {
            "prompts": self.prompts,
            "prompts_version": PROMPTS_VERSION,
            "marker": scratchpad.MARKER,
        }

    def build_prompt(self, pass_name: str, previous: Sequence[PassOutput]) -> str:
        """Pass 3 sees pass 1's caption and pass 2's scratchpad."""
        if pass_name != "refine":
            return self.prompts[pass_name]
        by_name = {p.name: p for p in previous}
        return refine_prompt(
            by_name["direct"].caption, by_name["scratchpad"].reasoning, self.prompts["refine"]
        )

    def parse(self, pass_name: str, raw: str) -> ParsedOutput:
        """Direct: first line; scratchpad and refine: after the last 'Caption:'."""
        if pass_name == "direct":
            return self._direct.parse(pass_name, raw)
        return self._scratch.parse(pass_name, raw)

    def finalize(self, passes: Sequence[PassOutput]) -> MethodOutput:
        """The refinement is the caption (an empty one falls back to pass 2, then pass 1)."""
        by_name = {p.name: p for p in passes}
        captions = {p.name: p.caption for p in passes}
        final = by_name.get("refine")
        status = final.parse_status if final else "fallback:no_refine"
        caption = final.caption if final else ""
        for fallback in ("scratchpad", "direct"):
            if not caption and captions.get(fallback):
                caption, status = captions[fallback], f"fallback:refine_empty_used_{fallback}"
        return MethodOutput(
            generated_caption=caption,
            reasoning_trace=by_name["scratchpad"].reasoning if "scratchpad" in by_name else "",
            metadata={
                "parse_status": status,
                "pass_captions": captions,
                "refine_changed_draft": captions.get("refine") != captions.get("direct"),
                "pass_comparison": compare_passes(passes),
            },
        )


def compare_passes(passes: Sequence[PassOutput]) -> dict[str, Any]:
    """Per metric the best pass and every pass's difference from the direct caption's score.

    Empty while the passes carry no metrics (no per-sample metrics were computed).
    """
    names = sorted({m for p in passes for m, v in p.metrics.items() if v is not None})
    best: dict[str, str] = {}
    deltas: dict[str, dict[str, float]] = {}
    for metric in names:
        scored: list[tuple[str, float]] = []
        for p in passes:
            value = p.metrics.get(metric)
            if value is not None:
                scored.append((p.name, float(value)))
        best[metric] = max(scored, key=lambda item: item[1])[0]  # first pass wins a tie
        base = next((v for n, v in scored if n == "direct"), None)
        if base is not None:
            deltas[metric] = {n: v - base for n, v in scored if n != "direct"}
    return {"best_pass": best, "delta_vs_direct": deltas} if names else {}
