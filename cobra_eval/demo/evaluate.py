"""Check a demo model the way a user runs it: ``python -m cobra_eval.demo.evaluate``.

Generates through the tool's own ``hf`` backend (``AutoProcessor`` +
``AutoModelForImageTextToText``, chat template, left-padded batches, greedy) and
reads the answers with the methods' own parsers.
"""

from __future__ import annotations

import argparse
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cobra_eval.demo import DEMO_MODEL_DIR
from cobra_eval.demo.targets import corrupt_scene, scratchpad_notes
from cobra_eval.demo.world import (
    canonical_caption,
    ensure_demo_dataset,
    load_scenes,
    reference_captions,
)
from cobra_eval.methods import baseline, llava_cot, scratchpad, scratchpad_compare
from cobra_eval.methods.base import PassOutput

_STAGES_IN_ORDER = re.compile(
    r"<SUMMARY>.*?</SUMMARY>.*?<CAPTION>.*?</CAPTION>.*?"
    r"<REASONING>.*?</REASONING>.*?<CONCLUSION>.*?</CONCLUSION>",
    re.DOTALL,
)


def has_stages_in_order(text: str) -> bool:
    """Whether all four LLaVA-CoT tag pairs appear, each closed, in order."""
    return _STAGES_IN_ORDER.search(text) is not None


def normalize(caption: str) -> str:
    """Lower case, single spaces, no final full stop: the form exact matches compare."""
    return " ".join(caption.lower().split()).rstrip(".").strip()


def matches_reference(caption: str, references: Sequence[str]) -> bool:
    """Whether a caption equals one of the references (after :func:`normalize`)."""
    return normalize(caption) in {normalize(r) for r in references}


def generate(
    backend: Any,
    image_paths: Sequence[Path],
    prompts: Sequence[str],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 128,
) -> list[str]:
    """Greedy answers for (image, prompt) pairs through the tool's own backend, in batches."""
    from cobra_eval.backends import GenerationRequest
    from cobra_eval.config import GenerationParams

    params = GenerationParams(max_new_tokens=max_new_tokens)
    requests = [
        GenerationRequest(image_path=path, prompt=prompt)
        for path, prompt in zip(image_paths, prompts, strict=True)
    ]
    answers: list[str] = []
    for start in range(0, len(requests), batch_size):
        answers.extend(backend.generate(requests[start : start + batch_size], params))
    return answers


def demo_backend(model_dir: Path = DEMO_MODEL_DIR) -> Any:
    """The hf backend on a demo model folder (CPU, float32), exactly as `--model DIR` gets it."""
    from cobra_eval.backends import BackendOptions, create_backend

    return create_backend("hf", BackendOptions(model=str(model_dir), device="cpu", dtype="float32"))


def evaluate(
    model_dir: Path = DEMO_MODEL_DIR,
    *,
    count: int = 200,
    batch_size: int = 8,
    root: Path | None = None,
    verbose: bool = True,
) -> dict[str, float]:
    """Rates on the first ``count`` held-out images, through the user's inference path.

    ``baseline_exact``: the baseline caption equals a reference; ``scratchpad_marker``:
    the scratchpad answer contains "Caption:"; ``llava_cot_tags``: all four tag
    pairs in order; ``refine_exact``: scratchpad_compare's refined caption (from
    the model's own draft and scratchpad) equals a reference. The ``*_exact`` extras
    and ``refine_fixes_corrupted`` (a deliberately wrong draft is corrected) say
    more about what the model learned.
    """
    started = time.monotonic()
    backend = demo_backend(model_dir)
    rows = load_scenes(ensure_demo_dataset("eval", root))[:count]
    images = [path for _, path, _ in rows]
    refs = [reference_captions(scene) for _, _, scene in rows]
    n = len(rows)

    def run(prompts: Sequence[str]) -> list[str]:
        return generate(backend, images, prompts, batch_size=batch_size)

    base_method, scratch_method = baseline.Baseline(), scratchpad.Scratchpad()
    cot_method, compare = (
        llava_cot.LlavaCot(use_format_instruction=True),
        scratchpad_compare.ScratchpadCompare(),
    )
    direct_raw = run([baseline.PROMPT] * n)
    scratch_raw = run([scratchpad.PROMPT] * n)
    cot_raw = run([llava_cot.build_prompt(True)] * n)
    direct = [base_method.parse("caption", raw) for raw in direct_raw]
    scratch = [scratch_method.parse("scratchpad", raw) for raw in scratch_raw]
    cot = [cot_method.parse("llava_cot", raw) for raw in cot_raw]
    refine_prompts = [
        compare.build_prompt(
            "refine",
            [
                PassOutput(name="direct", prompt="", raw_output=dr, caption=d.caption),
                PassOutput(
                    name="scratchpad",
                    prompt="",
                    raw_output=sr,
                    caption=s.caption,
                    reasoning=s.reasoning,
                ),
            ],
        )
        for dr, d, sr, s in zip(direct_raw, direct, scratch_raw, scratch, strict=True)
    ]
    refined = [compare.parse("refine", raw) for raw in run(refine_prompts)]
    rng = random.Random(0)
    corrupted_prompts = [
        scratchpad_compare.refine_prompt(
            canonical_caption(corrupt_scene(scene, rng)), scratchpad_notes(scene)
        )
        for _, _, scene in rows
    ]
    fixed = [compare.parse("refine", raw) for raw in run(corrupted_prompts)]

    def rate(flags: Sequence[bool]) -> float:
        return sum(flags) / max(1, len(flags))

    def exact(parsed: Sequence[Any]) -> float:
        return rate([matches_reference(p.caption, r) for p, r in zip(parsed, refs, strict=True)])

    results = {
        "baseline_exact": exact(direct),
        "scratchpad_marker": rate([scratchpad.MARKER in raw for raw in scratch_raw]),
        "llava_cot_tags": rate([has_stages_in_order(raw) for raw in cot_raw]),
        "refine_exact": exact(refined),
        "scratchpad_exact": exact(scratch),
        "llava_cot_exact": exact(cot),
        "refine_fixes_corrupted": exact(fixed),
    }
    if verbose:
        print(f"held-out images: {n}, evaluated in {time.monotonic() - started:.1f}s")
        for key, value in results.items():
            print(f"  {key:24s} {value:7.1%}  ({round(value * n)}/{n})")
        for k in range(min(2, n)):
            print(f"  example {rows[k][0]}: reference {refs[k][0]!r}")
            print(f"    baseline   {direct_raw[k]!r}")
            print(f"    scratchpad {scratch_raw[k]!r}")
            print(f"    llava_cot  {cot_raw[k]!r}")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: evaluate a demo model folder on held-out images."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--batch-size", "--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    evaluate(args.model, count=args.count, batch_size=args.batch_size)


if __name__ == "__main__":
    main()
