"""The methods' parsers over realistic raw outputs: a defined caption and status, never a crash."""

from __future__ import annotations

import pytest

from cobra_eval.methods import PassOutput, get_method
from cobra_eval.methods.scratchpad_compare import compare_passes

COT_FULL = (
    "<SUMMARY> I will describe the image by identifying the shapes and their layout. </SUMMARY>\n\n"
    "<CAPTION> The image shows a red circle on the left and a blue square on the right. "
    "</CAPTION>\n\n<REASONING> The circle is red and sits left of the square, which is blue. "
    "</REASONING>\n\n<CONCLUSION> A red circle to the left of a blue square. </CONCLUSION>"
)
# Llama-3.2V-11B-cot style answers often stop closing tags once they are past the caption.
COT_UNCLOSED_END = (
    "<SUMMARY> I will examine the image and describe it. </SUMMARY>\n"
    "<CAPTION> A kitchen with a stove and a window. </CAPTION>\n"
    "<REASONING> The stove is under the window, the counter is white.\n"
    "<CONCLUSION> A white kitchen with a stove under a window."
)
COT_TRUNCATED = (
    "<SUMMARY> I will describe the picture. </SUMMARY> <CAPTION> Two dogs run on a beach. "
    "</CAPTION> <REASONING> Both dogs are brown and the sea is behind them. </REASONING> "
    "<CONCLUSION> Two brown dogs running along"
)
COT_NO_CONCLUSION = (
    "<SUMMARY> Describe the scene. </SUMMARY> <CAPTION> A man riding a horse in a field. "
    "</CAPTION> <REASONING> The horse is galloping."
)
COT_LABELS = (
    "**Summary:** I will look at the objects.\n**Caption:** A cat on a sofa.\n"
    "**Reasoning:** The cat is grey and lies on a red sofa.\n**Conclusion:** A grey cat lying on "
    "a red sofa."
)

CASES = [
    # baseline
    ("baseline", "A red circle to the left of a blue square.", "A red circle to the left of a blue square.", "ok"),
    ("baseline", "  a dog on a skateboard  \n", "a dog on a skateboard", "ok"),
    ("baseline", '"A man holding an umbrella."', "A man holding an umbrella.", "ok"),
    ("baseline", "**A plate of food on a table.**", "A plate of food on a table.", "ok"),
    ("baseline", "Caption: a bus parked on a street", "a bus parked on a street", "ok"),
    ("baseline", "Sure! Here is a caption:\nA train at a station.", "A train at a station.", "ok"),
    ("baseline", "A cat sleeping.\nThe cat is orange and lies on a bed.", "A cat sleeping.", "ok"),
    ("baseline", "", "", "empty"),
    ("baseline", "   \n\n  ", "", "empty"),
    ("baseline", "a giraffe standing next to a", "a giraffe standing next to a", "ok"),
    # scratchpad
    ("scratchpad", "Objects: a red circle; a blue square.\nRelation: left of.\nCaption: a red circle left of a blue square", "a red circle left of a blue square", "ok"),
    ("scratchpad", "objects: two dogs\ncaption: two dogs playing", "two dogs playing", "ok"),
    ("scratchpad", "Notes: a bike.\n**Caption:** A bike leaning on a wall.", "A bike leaning on a wall.", "ok"),
    ("scratchpad", "Scratchpad: a boat.\n## Caption\nA boat on a lake.", "A boat on a lake.", "ok"),
    ("scratchpad", "Caption: a draft.\nWait, the boat is red.\nCaption: A red boat on a lake.", "A red boat on a lake.", "ok"),
    ("scratchpad", "Objects: a cake.\nCaption: A birthday cake with candles.\nI hope this helps!", "A birthday cake with candles.", "ok"),
    ("scratchpad", "Objects: a cake.\nFINAL CAPTION: A chocolate cake.", "A chocolate cake.", "ok"),
    ("scratchpad", "Objects: a red circle; a blue", "a red circle; a blue", "fallback:no_marker"),
    ("scratchpad", "The image has a tree.\nA tall tree in a park.", "A tall tree in a park.", "fallback:no_marker"),
    ("scratchpad", "Objects: a kite.\nCaption: A kite in the sky.\nCaption:", "A kite in the sky.", "fallback:empty_last_marker"),
    ("scratchpad", "Objects: a kite.\nCaption:", "", "empty"),
    ("scratchpad", "", "", "empty"),
    # llava_cot
    ("llava_cot", COT_FULL, "A red circle to the left of a blue square.", "ok"),
    ("llava_cot", COT_FULL.lower(), "a red circle to the left of a blue square.", "ok"),
    ("llava_cot", COT_UNCLOSED_END, "A white kitchen with a stove under a window.", "fallback:unclosed_reasoning,unclosed_conclusion"),
    ("llava_cot", COT_TRUNCATED, "Two brown dogs running along", "fallback:unclosed_conclusion"),
    ("llava_cot", COT_NO_CONCLUSION, "A man riding a horse in a field.", "fallback:no_conclusion"),
    ("llava_cot", COT_LABELS, "A grey cat lying on a red sofa.", "fallback:labels"),
    ("llava_cot", "< CONCLUSION > A yellow taxi. </ CONCLUSION >", "A yellow taxi.", "ok"),
    ("llava_cot", "<CONCLUSION>A vase.</CONCLUSION><CONCLUSION>A vase of flowers.</CONCLUSION>", "A vase of flowers.", "fallback:repeated_conclusion"),
    ("llava_cot", "<SUMMARY> x </SUMMARY> <CONCLUSION> </CONCLUSION> <CAPTION> A pizza. </CAPTION>", "A pizza.", "fallback:no_conclusion"),
    ("llava_cot", "A horse in a field.", "A horse in a field.", "fallback:no_tags"),
    ("llava_cot", "", "", "empty"),
    ("llava_cot", "<SUMMARY></SUMMARY>", "", "empty"),
    # scratchpad_compare's refinement pass reads like scratchpad
    ("scratchpad_compare:refine", "The draft is wrong about the colour.\nCaption: a green bus", "a green bus", "ok"),
    ("scratchpad_compare:direct", "A bus.", "A bus.", "ok"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "raw", "caption", "status"), CASES)
def test_parse_table(method: str, raw: str, caption: str, status: str) -> None:
    name, _, pass_name = method.partition(":")
    instance = get_method(name)
    parsed = instance.parse(pass_name or instance.pass_names[0], raw)
    assert (parsed.caption, parsed.parse_status) == (caption, status)


def test_llava_cot_stages_land_in_metadata() -> None:
    method = get_method("llava_cot")
    parsed = method.parse("llava_cot", COT_FULL)
    out = method.finalize([PassOutput(name="llava_cot", prompt="p", raw_output=COT_FULL,
                                      caption=parsed.caption, reasoning=parsed.reasoning,
                                      parse_status=parsed.parse_status, details=parsed.details)])  # fmt: skip
    assert list(out.metadata["stages"]) == ["SUMMARY", "CAPTION", "REASONING", "CONCLUSION"]
    assert out.reasoning_trace.startswith("SUMMARY: I will describe the image")
    assert "CONCLUSION" not in out.reasoning_trace


def test_the_format_instruction_is_switchable() -> None:
    with_it = get_method("llava_cot").build_prompt("llava_cot", [])
    without = get_method("llava_cot", options={"use_format_instruction": False})
    assert with_it.startswith("I have an image and a question")
    assert without.build_prompt("llava_cot", []) == "Describe this image in one sentence."
    assert get_method("llava_cot").config() != without.config()


def _pass(name: str, caption: str, status: str = "ok", **metrics: float) -> PassOutput:
    return PassOutput(name=name, prompt="p", raw_output=caption, caption=caption,
                      parse_status=status, metrics=metrics)  # fmt: skip


def test_an_empty_refinement_falls_back_to_the_scratchpad_then_the_draft() -> None:
    method = get_method("scratchpad_compare")
    out = method.finalize([_pass("direct", "a cat"), _pass("scratchpad", "a grey cat"),
                           _pass("refine", "", "empty")])  # fmt: skip
    assert out.generated_caption == "a grey cat"
    assert out.metadata["parse_status"] == "fallback:refine_empty_used_scratchpad"
    out = method.finalize([_pass("direct", "a cat"), _pass("scratchpad", "", "empty"),
                           _pass("refine", "", "empty")])  # fmt: skip
    assert (out.generated_caption, out.metadata["parse_status"]) == (
        "a cat",
        "fallback:refine_empty_used_direct",
    )


def test_pass_comparison_names_the_best_pass_and_deltas() -> None:
    passes = [_pass("direct", "a", CIDEr=0.5, Bleu_4=0.3), _pass("scratchpad", "b", CIDEr=0.9,
              Bleu_4=0.2), _pass("refine", "c", CIDEr=1.2, Bleu_4=0.3)]  # fmt: skip
    result = compare_passes(passes)
    assert result["best_pass"] == {"Bleu_4": "direct", "CIDEr": "refine"}
    assert result["delta_vs_direct"]["CIDEr"] == pytest.approx({"scratchpad": 0.4, "refine": 0.7})
    assert compare_passes([_pass("direct", "a")]) == {}
