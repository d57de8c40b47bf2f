"""Real-scale throughput: a LLaVA-1.5-7B-shaped model with random weights, on a GPU.

    python -m benchmarks.gpu_scale [--device cuda] [--shape llava-1.5-7b]
        [--batches 1,8,32] [--batches_each 8,4,4] [--repeats 1] [--keep DIR]

On a machine lent through the device tool, `bash benchmarks/gpu_scale.sh` runs
this with the packages it lacks (see that file); it is meant to finish in under
8 minutes on one H200.

No weights can be downloaded there or here, so LLaVA-1.5-7B's architecture is
written below from its public numbers (CLIP ViT-L/14 at 336 px, the second-last
layer's patch features, a two-layer GELU projector, a 32-layer Llama-2-7B
language model, vocabulary 32,064) and built with random weights (seed 0) in
bfloat16 on the device. Its tokenizer is the demo's with placeholder tokens
added up to that vocabulary, and its processor the demo's resized to 336 px
with 14 px patches (576 image tokens a prompt). Every output is exactly TOKENS
tokens long (min_new_tokens = max_new_tokens), so every batch does the same work.

The model is saved and loaded back by the hf backend like any local model, then
for each batch size: the bare generate loop and ``--metrics none`` runs through
``run_evaluation`` (fresh database and folder, checkpoint every 10 as by default,
the generation cache on), as run_overhead measures them (bare, run, run, bare per
repeat), over the batch size times --batches_each samples of the demo dataset.
Samples per second come from the median times; the overhead is the runs' loop
against the bare loops. Each batch size's lines are printed as soon as they are
measured, so a run stopped early still reports the ones before.

``--shape tiny`` keeps that structure (336 px, 576 image tokens, the 32,064 tokens)
with small widths, so that the script runs on a CPU in seconds: the tests do. The
7B shape runs on a CPU too, slowly: ``--device cpu --tokens 2 --batches 1
--batches_each 1`` took 3 minutes and 14.7 GB of memory on a 2-core machine (built
and saved in 131 s, loaded in 12 s).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)
from transformers.utils import logging as transformers_logging

from benchmarks.run_overhead import bare_generation, measure_overhead
from cobra_eval.backends import BackendOptions, create_backend
from cobra_eval.config import GenerationParams
from cobra_eval.demo import DEMO_MODEL_DIR

#: Tokens of every output.
TOKENS = 64
IMAGE_SIZE, PATCH = 336, 14


@dataclass(frozen=True)
class Shape:
    """The widths and depths of a LLaVA-1.5 model's two towers."""

    #: language model: hidden width, MLP width, layers, attention heads, vocabulary
    text: tuple[int, int, int, int, int]
    #: vision tower: hidden width, MLP width, layers, attention heads
    vision: tuple[int, int, int, int]


SHAPES = {
    # llava-hf/llava-1.5-7b-hf's config: Vicuna-7B (Llama-2-7B) and CLIP ViT-L/14-336
    "llava-1.5-7b": Shape(text=(4096, 11008, 32, 32, 32064), vision=(1024, 4096, 24, 16)),
    "tiny": Shape(text=(64, 128, 2, 2, 32064), vision=(32, 64, 2, 2)),
}


def llava_config(shape: Shape) -> LlavaConfig:
    """The demo's LLaVA config with LLaVA-1.5's image handling and this shape's towers."""
    config = LlavaConfig.from_pretrained(DEMO_MODEL_DIR)
    text, vision = config.text_config, config.vision_config
    # built from the file's dicts
    assert not isinstance(text, dict | None) and not isinstance(vision, dict | None)
    hidden, mlp, layers, heads, vocab = shape.text
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = hidden, mlp, layers
    text.num_attention_heads = text.num_key_value_heads = heads
    text.head_dim = hidden // heads
    text.vocab_size, text.max_position_embeddings, text.rms_norm_eps = vocab, 4096, 1e-5
    hidden, mlp, layers, heads = shape.vision
    vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers = hidden, mlp, layers
    vision.num_attention_heads = heads
    vision.image_size, vision.patch_size, vision.projection_dim = IMAGE_SIZE, PATCH, 768
    config.vision_feature_layer = -2  # LLaVA-1.5 takes the second-last layer's patches
    config.image_seq_length = (IMAGE_SIZE // PATCH) ** 2
    return config


def build_model(
    folder: Path, shape: Shape, device: str, dtype: torch.dtype, tokens: int = TOKENS
) -> int:
    """Build the model with random weights on the device, save it with its processor.

    Returns its parameter count.
    """
    config = llava_config(shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    count = sum(p.numel() for p in model.parameters())
    generation = GenerationConfig.from_pretrained(DEMO_MODEL_DIR)
    generation.min_new_tokens = generation.max_new_tokens = tokens
    model.generation_config = generation
    transformers_logging.disable_progress_bar()
    model.save_pretrained(folder)
    del model
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    tokenizer.add_tokens([f"<w{i}>" for i in range(len(tokenizer), shape.text[4])])
    processor = AutoProcessor.from_pretrained(DEMO_MODEL_DIR)
    processor.tokenizer = tokenizer
    processor.patch_size = PATCH
    processor.image_processor.size = {"shortest_edge": IMAGE_SIZE}
    processor.image_processor.crop_size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    processor.save_pretrained(folder)
    return count


def device_name(device: str) -> str:
    """The GPU's name and memory, or CPU."""
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{props.name}, {props.total_memory / 1024**3:.0f} GiB"
    return "CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llava-1.5-7b")
    parser.add_argument("--batches", default="1,8,32", help="Batch sizes, comma-separated.")
    parser.add_argument("--batches_each", default="8,4,4",
                        help="Batches per timed loop, for each batch size.")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="bare, run, run, bare, each.")
    parser.add_argument("--keep", type=Path, help="Build the model in this folder and keep it.")
    parser.add_argument("--tokens", type=int, default=TOKENS,
                        help="Tokens an output (fewer to try it on a CPU).")  # fmt: skip
    args = parser.parse_args(argv)
    sizes = [int(b) for b in args.batches.split(",")]
    each = [int(b) for b in args.batches_each.split(",")]
    if len(each) != len(sizes):
        parser.error("--batches_each needs one number for each of --batches")
    dtype = torch.bfloat16
    params = GenerationParams(max_new_tokens=args.tokens)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / f"{args.shape}-random"
        started = time.perf_counter()
        count = build_model(folder, SHAPES[args.shape], args.device, dtype, args.tokens)
        built = time.perf_counter() - started
        print(f"{args.shape}-shaped LLaVA, random weights, bfloat16 on {device_name(args.device)}: "
              f"{count:,} parameters; {args.tokens} tokens an output, "
              f"{(IMAGE_SIZE // PATCH) ** 2} image tokens a prompt; built and saved in "
              f"{built:.0f} s", flush=True)  # fmt: skip
        backend = create_backend(
            "hf", BackendOptions(model=str(folder), device=args.device, dtype="bfloat16")
        )
        started = time.perf_counter()
        bare_generation(backend, 1, params, 1)  # loads the weights
        print(f"loaded by the hf backend and a first caption in "
              f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
        print("| batch | samples | bare generate loop, samples/s | run's loop (metrics none), "
              "samples/s | tool overhead | model's thread outside generate |")  # fmt: skip
        print("|---|---|---|---|---|---|", flush=True)
        for size, batches in zip(sizes, each, strict=True):
            n = size * batches
            bare_generation(backend, size, params, size)  # this batch size's first call
            out = measure_overhead(backend, n, args.repeats, Path(tmp), params, batch=size)
            bare, loop = statistics.median(out.bare), statistics.median(out.loop)
            print(f"| {size} | {n} | {n / bare:.2f} | {n / loop:.2f} | "
                  f"{statistics.median(out.pairs):.1f}% ({_span(out.pairs)}) | "
                  f"{statistics.median(out.outside):.1f}% |", flush=True)  # fmt: skip


def _span(values: list[float]) -> str:
    return f"{min(values):.1f} to {max(values):.1f}%"


if __name__ == "__main__":
    main()
