"""What the demo model is trained to answer to every prompt the methods send.

The prompts come from the method modules themselves, so a changed prompt changes
the training data rather than silently leaving the demo model behind.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from cobra_eval.demo.world import COLORS, RELATIONS, SHAPES, canonical_caption, noun
from cobra_eval.methods import baseline, llava_cot, scratchpad, scratchpad_compare

#: The tasks the demo model knows, in a fixed order.
TASKS = ("baseline", "scratchpad", "llava_cot", "refine")


@dataclass(frozen=True)
class Example:
    """One training pair: the text prompt (the image goes with it) and the answer."""

    task: str
    prompt: str
    target: str


def fixed_prompts() -> dict[str, str]:
    """The prompts that do not depend on the sample, by task."""
    return {
        "baseline": baseline.PROMPT,
        "scratchpad": scratchpad.PROMPT,
        "llava_cot": llava_cot.build_prompt(True),
    }


def _the(obj: dict[str, Any]) -> str:
    return f"the {obj['color']} {obj['shape']}"


def scratchpad_notes(scene: dict[str, Any]) -> str:
    """The scratchpad before the marker, as the scratchpad pass's reasoning parses it."""
    a, b = scene["a"], scene["b"]
    return f"Objects: {noun(a)}; {noun(b)}.\nRelation: {_the(a)} is {scene['relation']} {_the(b)}."


def scratchpad_target(scene: dict[str, Any]) -> str:
    """Scratchpad notes, then the canonical caption after the marker."""
    return f"{scratchpad_notes(scene)}\n{scratchpad.MARKER} {canonical_caption(scene)}"


def llava_cot_target(scene: dict[str, Any]) -> str:
    """The four LLaVA-CoT stages, with short fixed-template texts; the conclusion is the caption."""
    a, b = scene["a"], scene["b"]
    return (
        "<SUMMARY> I will find the two shapes, note their colours and positions, "
        "and describe them in one sentence. </SUMMARY>\n"
        f"<CAPTION> The image shows {noun(a)} and {noun(b)} on a grey background. </CAPTION>\n"
        f"<REASONING> {_the(a).capitalize()} is {scene['relation']} {_the(b)}, "
        f"so the caption names {_the(a)} first. </REASONING>\n"
        f"<CONCLUSION> {canonical_caption(scene)} </CONCLUSION>"
    )


def refine_target(scene: dict[str, Any]) -> str:
    """The refinement's answer: the image's canonical caption after the marker."""
    return f"{scratchpad.MARKER} {canonical_caption(scene)}"


def corrupt_scene(scene: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A copy of the scene with one thing wrong: a colour, a shape, the relation, or the order."""
    wrong = {
        "a": dict(scene["a"]),
        "b": dict(scene["b"]),
        "relation": scene["relation"],
    }
    kind = rng.choice(("color", "shape", "relation", "swap"))
    which = rng.choice(("a", "b"))
    if kind == "color":
        taken = {scene["a"]["color"], scene["b"]["color"]}
        wrong[which]["color"] = rng.choice([c for c in COLORS if c not in taken])
    elif kind == "shape":
        wrong[which]["shape"] = rng.choice([s for s in SHAPES if s != scene[which]["shape"]])
    elif kind == "relation":
        wrong["relation"] = rng.choice([r for r in RELATIONS if r != scene["relation"]])
    else:
        wrong["a"], wrong["b"] = wrong["b"], wrong["a"]
    return wrong


def refine_example(scene: dict[str, Any], rng: random.Random) -> Example:
    """A refinement prompt with a draft and notes that may be wrong, and the image's caption.

    Drafts are right about half the time and notes most of the time, as the demo
    model's own passes would be at worst, so the refinement learns to check both
    against the image instead of copying either.
    """
    roll = rng.random()
    if roll < 0.05:
        draft = ""
    elif roll < 0.5:
        draft = canonical_caption(corrupt_scene(scene, rng))
    else:
        draft = canonical_caption(scene)
    roll = rng.random()
    if roll < 0.05:
        notes = ""
    elif roll < 0.25:
        notes = scratchpad_notes(corrupt_scene(scene, rng))
    else:
        notes = scratchpad_notes(scene)
    prompt = scratchpad_compare.refine_prompt(draft, notes)
    return Example("refine", prompt, refine_target(scene))


def example(task: str, scene: dict[str, Any], rng: random.Random) -> Example:
    """The training pair of one task for one scene (the refinement draws its draft from rng)."""
    if task == "refine":
        return refine_example(scene, rng)
    prompt = fixed_prompts()[task]
    if task == "baseline":
        return Example(task, prompt, canonical_caption(scene))
    if task == "scratchpad":
        return Example(task, prompt, scratchpad_target(scene))
    if task == "llava_cot":
        return Example(task, prompt, llava_cot_target(scene))
    raise ValueError(f"unknown demo task {task!r}; expected one of {TASKS}")


def corpus_texts(scenes: list[dict[str, Any]], seed: int = 0) -> list[str]:
    """The prompt and target of every task for the given scenes: the tokenizer's corpus."""
    rng = random.Random(seed)
    # Prompts are counted once per example, as often as the model reads them, so the
    # byte-pair merges favour them as much as the answers.
    return [
        text
        for scene in scenes
        for task in TASKS
        for text in (lambda ex: (ex.prompt, ex.target))(example(task, scene, rng))
    ]
