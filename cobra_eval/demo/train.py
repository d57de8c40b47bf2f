"""Train the bundled demo model: ``python -m cobra_eval.demo.train``.

Builds a byte-level BPE tokenizer, a LLaVA processor and a tiny LLaVA (CLIP vision
tower + Llama) from code, trains it on CPU on the demo world's train split for
every prompt the methods send, saves it with ``save_pretrained`` and then checks
it on held-out images through exactly the inference path a user gets
(``AutoProcessor`` + ``AutoModelForImageTextToText``, chat template, left padding,
batched greedy ``generate``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cobra_eval.demo import DEMO_MODEL_DIR
from cobra_eval.demo.targets import TASKS, Example, corpus_texts, example
from cobra_eval.demo.world import IMAGE_SIZE, ensure_demo_dataset, load_scenes

IMAGE_TOKEN = "<image>"
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
PATCH_SIZE = 8
#: More than the corpus needs: BPE stops once every word is a single token.
VOCAB_SIZE = 1024
#: USER turn with the image before its text, then the assistant's generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}"
    "ASSISTANT: {% else %}{{ message['role'] | upper }}: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{{ '\\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tokenizer(texts: Sequence[str], vocab_size: int = VOCAB_SIZE) -> Any:
    """A byte-level BPE tokenizer trained on the demo texts, left-padding, with the chat template.

    Byte-level BPE can encode any string (unknown words fall back to bytes), so no
    text a method produces can fail to tokenize.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, IMAGE_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Chat-template words are part of every sequence, so they get merges too.
    core.train_from_iterator([*texts, "USER: <image>\nASSISTANT:"], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        model_max_length=1024,
        # Without this, transformers 4.x returns token_type_ids, which generate() refuses.
        model_input_names=["input_ids", "attention_mask"],
    )


def build_processor(tokenizer: Any) -> Any:
    """A LlavaProcessor: a 64x64 CLIP image processor (Pillow backend) and the tokenizer."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        # CLIP prepends a CLS token that the "default" strategy drops again.
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer: Any, *, text_hidden: int = 128, text_layers: int = 2) -> Any:
    """A tiny LLaVA: CLIP vision tower (64px, patch 8) and a small Llama."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=64,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=text_hidden * 4,
        num_hidden_layers=text_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        # With a 2-layer tower the default (-2) would skip half of it.
        vision_feature_layer=-1,
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        tie_word_embeddings=False,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.do_sample = False
    model.generation_config.max_new_tokens = 128
    return model


def chat_text(processor: Any, prompt: str) -> str:
    """The chat-template rendering of one user turn (image + prompt) plus the generation prompt."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return str(processor.apply_chat_template(messages, add_generation_prompt=True))


def image_token_count(processor: Any) -> int:
    """How many image placeholder tokens the processor puts in for one image."""
    per_side = IMAGE_SIZE // processor.patch_size
    return per_side * per_side + processor.num_additional_image_tokens - 1


class PromptEncoder:
    """Token ids of chat-rendered prompts with the image placeholders expanded, cached."""

    def __init__(self, processor: Any):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.images = image_token_count(processor)
        self._cache: dict[str, list[int]] = {}

    def __call__(self, prompt: str) -> list[int]:
        """The ids the processor would give this prompt's chat text with one image."""
        ids = self._cache.get(prompt)
        if ids is None:
            text = chat_text(self.processor, prompt).replace(IMAGE_TOKEN, IMAGE_TOKEN * self.images)
            ids = list(self.tokenizer(text, add_special_tokens=False).input_ids)
            if len(self._cache) < 10_000:
                self._cache[prompt] = ids
        return ids

    def answer(self, target: str) -> list[int]:
        """Answer ids as generation should produce them: the text, then end of sequence."""
        ids = self.tokenizer(" " + target, add_special_tokens=False).input_ids
        return [*ids, self.tokenizer.eos_token_id]


def load_pixels(processor: Any, paths: Sequence[Path], chunk: int = 500) -> torch.Tensor:
    """Pixel values of every image, preprocessed once by the processor's image processor."""
    from PIL import Image

    out = []
    for start in range(0, len(paths), chunk):
        images = []
        for path in paths[start : start + chunk]:
            with Image.open(path) as img:
                images.append(img.convert("RGB"))
        out.append(processor.image_processor(images, return_tensors="pt")["pixel_values"])
    return torch.cat(out)


def collate(
    encoder: PromptEncoder, examples: Sequence[Example]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask and answer-only labels for one batch."""
    rows = [(encoder(ex.prompt), encoder.answer(ex.target)) for ex in examples]
    width = max(len(p) + len(a) for p, a in rows)
    pad = encoder.tokenizer.pad_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (prompt, answer) in enumerate(rows):
        n = len(prompt) + len(answer)
        ids[r, :n] = torch.tensor(prompt + answer)
        mask[r, :n] = 1
        labels[r, len(prompt) : n] = torch.tensor(answer)
    return ids, mask, labels


def learning_rate(progress: float, peak: float, warmup: float = 0.03) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if progress < warmup:
        return peak * max(progress / warmup, 0.01)
    done = min(1.0, (progress - warmup) / (1 - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))


def parse_mix(text: str) -> dict[str, int]:
    """'baseline=4,scratchpad=2' -> steps of each task per round (tasks left out get none)."""
    mix: dict[str, int] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in TASKS:
            raise SystemExit(f"--mix: unknown task {name.strip()!r}; expected one of {TASKS}")
        mix[name.strip()] = int(weight or 1)
    return mix


def train(args: argparse.Namespace) -> Path:
    """Build, train and save the demo model; returns the folder it was saved in."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    rows = load_scenes(ensure_demo_dataset("train"))
    scenes = [scene for _, _, scene in rows]
    tokenizer = build_tokenizer(corpus_texts(scenes[:1500], seed=args.seed))
    processor = build_processor(tokenizer)
    model = build_model(tokenizer, text_hidden=args.hidden, text_layers=args.layers)
    params = sum(p.numel() for p in model.parameters())
    print(f"vocabulary {len(tokenizer)} tokens, model {params / 1e6:.2f}M parameters", flush=True)
    pixels = load_pixels(processor, [path for _, path, _ in rows])
    encoder = PromptEncoder(processor)
    print(f"{len(scenes)} training images ready in {time.monotonic() - started:.1f}s", flush=True)

    schedule = [task for task, weight in parse_mix(args.mix).items() for _ in range(weight)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    rng = random.Random(args.seed)
    order: dict[str, list[int]] = {task: [] for task in TASKS}
    budget = args.minutes * 60.0
    train_start = time.monotonic()
    step, losses = 0, {task: 0.0 for task in TASKS}
    model.train()
    while True:
        elapsed = time.monotonic() - train_start
        progress = step / args.steps if args.steps else elapsed / budget
        if progress >= 1.0:
            break
        task = "baseline" if progress < args.caption_first else schedule[step % len(schedule)]
        if len(order[task]) < args.batch_size:
            fresh = list(range(len(scenes)))
            rng.shuffle(fresh)
            order[task].extend(fresh)
        picked = order[task][: args.batch_size]
        del order[task][: args.batch_size]
        examples = [example(task, scenes[i], rng) for i in picked]
        ids, mask, labels = collate(encoder, examples)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(progress, args.lr)
        loss = model(
            input_ids=ids, attention_mask=mask, pixel_values=pixels[picked], labels=labels
        ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        value = float(loss.detach())
        losses[task] = 0.9 * losses[task] + 0.1 * value if losses[task] else value
        step += 1
        if step % args.log_every == 0:
            shown = " ".join(f"{t}={v:.3f}" for t, v in losses.items())
            print(
                f"[{elapsed / 60:5.1f} min] step {step}  lr {learning_rate(progress, args.lr):.2e}"
                f"  loss {shown}",
                flush=True,
            )
    print(f"trained {step} steps in {(time.monotonic() - train_start) / 60:.1f} min", flush=True)
    model.eval()
    out = Path(args.out)
    # Save beside the target and swap it in, so no file of an older model lingers.
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    make_portable(staging)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)
    return out


def make_portable(folder: Path) -> None:
    """Rewrite what transformers 5 saved so that transformers 4.x loads it too.

    Version 5 reads all of these forms; 4.x needs the CLIP tower's weights under
    ``vision_tower.vision_model.`` (as in the LLaVA checkpoints on the hub), a
    tokenizer class it knows, and the image processor in preprocessor_config.json.
    """
    from safetensors.torch import load_file, save_file

    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    renamed = {
        (
            "vision_tower.vision_model." + key.removeprefix("vision_tower.")
            if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model.")
            else key
        ): value
        for key, value in tensors.items()
    }
    save_file(renamed, weights, metadata={"format": "pt"})

    tokenizer_config = folder / "tokenizer_config.json"
    config = json.loads(tokenizer_config.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("backend", None)
    if not config.get("extra_special_tokens"):
        config.pop("extra_special_tokens", None)
    tokenizer_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    processor_config = json.loads((folder / "processor_config.json").read_text())
    image_processor = dict(processor_config["image_processor"])
    image_processor["processor_class"] = "LlavaProcessor"
    (folder / "preprocessor_config.json").write_text(
        json.dumps(image_processor, indent=2, sort_keys=True) + "\n"
    )
    for path in folder.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; the files ship in a package


#: What the final check must reach (rates over the held-out images).
TARGETS = {"baseline_exact": 0.85, "scratchpad_marker": 0.95, "llava_cot_tags": 0.95}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train, save, then evaluate through the user's inference path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=9.0, help="training time budget")
    parser.add_argument(
        "--steps", type=int, default=0, help="train exactly this many steps instead (reproducible)"
    )
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_DIR, help="where to save")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", "--batch_size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128, help="Llama hidden size")
    parser.add_argument("--layers", type=int, default=2, help="Llama layers")
    parser.add_argument(
        "--mix",
        default="baseline=2,scratchpad=1,llava_cot=2,refine=1",
        help="training steps per task in each round; the plain caption teaches perception "
        "most cheaply, the formats need few steps",
    )
    parser.add_argument(
        "--caption-first",
        "--caption_first",
        type=float,
        default=0.4,
        help="fraction of the run that trains only the plain caption before the mix starts: "
        "seeing shapes is the slow skill, and every format reuses it",
    )
    parser.add_argument("--log-every", "--log_every", type=int, default=50)
    parser.add_argument("--eval-count", "--eval_count", type=int, default=200)
    args = parser.parse_args(argv)

    from cobra_eval.demo.evaluate import evaluate

    started = time.monotonic()
    out = train(args)
    print(f"saved to {out}", flush=True)
    results = evaluate(out, count=args.eval_count)
    print(f"total {(time.monotonic() - started) / 60:.1f} min", flush=True)
    missed = [k for k, floor in TARGETS.items() if results[k] < floor]
    if missed:
        print("below target: " + ", ".join(f"{k} {results[k]:.1%}" for k in missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
