"""Tiny random-weight vision-language models, built from configs and saved like real ones.

Nothing here touches the hub: tokenizers are built with the ``tokenizers``
library from a small word list, image processors and models from configs. Each
builder writes a folder that loads with ``AutoProcessor`` +
``AutoModelForImageTextToText`` exactly as a downloaded checkpoint does, so the
tests exercise the real loading path of ``--model <dir>``.

The tokenizers are word-level with a whitespace pre-tokenizer on purpose: every
non-special generated token decodes to one word, so a test can count the words
of an output to check ``max_new_tokens``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Vocabulary of the tiny tokenizers (plus the special tokens of each model).
_WORD_TEXT = """
a an the of on in under above below left right next to with and is are this that photo
picture image cat dog bird car tree house red green blue yellow purple orange black white
small big square circle triangle sitting standing running shows describe caption write short
long one two three sentence detail please what there it user assistant system objects first
then list all visible USER ASSISTANT User Assistant
"""
WORDS = _WORD_TEXT.split()
PUNCTUATION = [".", ",", ":", "?", "!", "'", '"', "(", ")", "-", ";"]

#: A LLaVA-1.5 style chat template: image placeholders first, then the text.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% endif %}"
    "{% endfor %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{% if message['role'] != 'user' %}</s>{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

#: An Idefics3 / SmolVLM style chat template ("User:<image>text<end_of_utterance>").
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}<image>{% endif %}"
    "{% endfor %}<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def build_tokenizer(
    special_tokens: list[str],
    *,
    chat_template: str,
    bos: str = "<s>",
    eos: str = "</s>",
    pad: str = "<pad>",
    unk: str = "<unk>",
    **named_tokens: str,
) -> Any:
    """A word-level fast tokenizer over WORDS with the given special tokens and chat template.

    named_tokens become named special tokens of the tokenizer (``image_token="<image>"``):
    processors read ``tokenizer.image_token`` to find their placeholder.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = [pad, unk, bos, eos]
    specials = base + [t for t in special_tokens if t not in base]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS + PUNCTUATION)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = [t for t in specials if t not in base]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        extra_special_tokens=extra,
        chat_template=chat_template,
        padding_side="left",
        **named_tokens,
    )


def tiny_llama_config(tokenizer: Any) -> Any:
    """The small Llama text model both tiny architectures share."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_llava(path: Path, *, seed: int = 0) -> Path:
    """A LLaVA-1.5 shaped model: CLIP vision tower (32px, patch 8) + a 2-layer Llama."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = build_tokenizer(
        ["<image>"], chat_template=LLAVA_CHAT_TEMPLATE, image_token="<image>"
    )
    image_size, patch = 32, 8
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        projection_dim=32,
    )
    text = tiny_llama_config(tokenizer)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // patch) ** 2,
        # the tower has 2 layers; the LLaVA default (-2) would read the first one's output
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        # the CLS token of CLIP counts here and "default" drops it again
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return _save(path, model, processor)


def build_tiny_idefics3(path: Path, *, seed: int = 0) -> Path:
    """An Idefics3 / SmolVLM shaped model: SigLIP-like tower (32px, patch 8) + a 2-layer Llama."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
    )

    row_col = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tokenizer = build_tokenizer(
        ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>",
         "<|im_start|>", *row_col],
        chat_template=IDEFICS3_CHAT_TEMPLATE,
        eos="<end_of_utterance>",
        image_token="<image>",
    )  # fmt: skip
    image_size, patch, scale = 32, 8, 2
    vision = Idefics3VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
    )
    text = tiny_llama_config(tokenizer)
    config = Idefics3Config(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
        # one global image per sample: splitting would multiply the tokens for nothing here
        do_image_splitting=False,
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(image_size // patch) ** 2 // scale**2,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    return _save(path, model, processor)


def _save(path: Path, model: Any, processor: Any) -> Path:
    # Random weights would now and then emit a special token (skipped when decoding) or
    # end early; suppressing them makes every output exactly max_new_tokens words long.
    words = set(WORDS) | set(PUNCTUATION)
    vocab = processor.tokenizer.get_vocab()
    model.generation_config.suppress_tokens = sorted(i for t, i in vocab.items() if t not in words)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    # transformers 5 nests the image processor settings in processor_config.json;
    # 4.x readers look for preprocessor_config.json, so write that too.
    preprocessor = path / "preprocessor_config.json"
    if not preprocessor.exists():
        preprocessor.write_text(
            json.dumps(processor.image_processor.to_dict(), indent=2, sort_keys=True, default=str)
        )
    return path


#: Builders by short name, for tests that run over every architecture.
BUILDERS = {"llava": build_tiny_llava, "idefics3": build_tiny_idefics3}
