"""Tool overhead beside a slower model than the demo's: whether it shrinks as the model grows.

    python -m benchmarks.scaled_overhead [--samples 256] [--repeats 3] [--width 512]

The demo model writes a caption in a few milliseconds, so every millisecond the
tool spends per batch shows in run_overhead. Here the demo's LLaVA config is
scaled up (the language model WIDTH wide, 4 layers; the vision tower as it is),
built with random weights (seed 0) and saved with the demo's tokenizer and
processor. The hf backend loads it like any local model. Its outputs are fixed
at TOKENS tokens (min_new_tokens = max_new_tokens), so every run does the same
work. The overhead is measured as in run_overhead: bare, run, run, bare,
--metrics none, batch 16, the median of the repeats. No GPU here: this is
still a small model on 2 cores, a step towards a real one, not a real one.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import torch
from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration
from transformers.utils import logging as transformers_logging

from benchmarks.run_overhead import BATCH, bare_generation, measure_overhead
from cobra_eval.backends import BackendOptions, create_backend
from cobra_eval.config import GenerationParams
from cobra_eval.demo import DEMO_MODEL_DIR

#: Tokens of every output.
TOKENS = 32
#: What a model folder needs besides its config and weights.
_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
          "preprocessor_config.json", "processor_config.json")  # fmt: skip


def build_model(folder: Path, width: int) -> Path:
    """The demo's LLaVA with a wider, deeper language model and random weights, saved."""
    config = LlavaConfig.from_pretrained(DEMO_MODEL_DIR)
    text = config.text_config
    assert text is not None and not isinstance(text, dict)  # built from the file's dict
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = width, 4 * width, 4
    text.num_attention_heads = text.num_key_value_heads = width // 64
    text.head_dim = 64
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    generation = GenerationConfig.from_pretrained(DEMO_MODEL_DIR)
    generation.min_new_tokens = TOKENS
    model.generation_config = generation
    transformers_logging.disable_progress_bar()  # its bar would land in RESULTS.md
    model.save_pretrained(folder)
    for name in _FILES:
        shutil.copy(DEMO_MODEL_DIR / name, folder / name)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=512, help="The language model's width.")
    args = parser.parse_args()
    params = GenerationParams(max_new_tokens=TOKENS)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "model", args.width)
        backend = create_backend("hf", BackendOptions(model=str(model)))
        bare_generation(backend, BATCH, params)  # load the weights before timing
        overhead = measure_overhead(backend, args.samples, args.repeats, Path(tmp), params)
    per_caption = statistics.median(overhead.bare) / args.samples * 1000
    print(f"{args.samples} demo samples at batch {BATCH} through a LLaVA-shaped model scaled "
          f"up from the demo's (language model {args.width} wide, 4 layers, random weights, "
          f"{TOKENS} tokens an output): {per_caption:.1f} ms a caption; {args.repeats} repeats "
          "(median, min-max)")  # fmt: skip
    overhead.report()


if __name__ == "__main__":
    main()
