"""Issue 10's GPU benchmark, checked where there is no GPU: its model's shape and its run.

benchmarks/gpu_scale.py builds LLaVA-1.5-7B from its public numbers with random
weights; a machine with a GPU runs it through benchmarks/gpu_scale.sh. Here the
7B shape is built on PyTorch's meta device (no memory) and the whole script runs
on the CPU in its tiny shape, which keeps the image and vocabulary handling.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, GenerationConfig, LlavaForConditionalGeneration

from benchmarks.gpu_scale import SHAPES, TOKENS, llava_config, main
from cobra_eval.datasets import load_dataset, select_samples
from cobra_eval.methods.baseline import PROMPT
from tests.conftest import load_json, subprocess_env


def test_the_7b_shape_has_the_parameters_of_llava_1_5_7b() -> None:
    config = llava_config(SHAPES["llava-1.5-7b"])
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    # llava-hf/llava-1.5-7b-hf's weights: Llama-2-7B with 32,064 tokens (6,738,939,904),
    # CLIP ViT-L/14-336 (303,507,456) and the projector (20,979,712)
    assert sum(p.numel() for p in model.parameters()) == 7_063_427_072
    assert config.image_seq_length == 576 and config.vision_feature_layer == -2


def test_the_benchmark_runs_in_its_tiny_shape_with_fixed_length_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "model"
    main(["--device", "cpu", "--shape", "tiny", "--batches", "1,2", "--batches_each", "1,2",
          "--keep", str(folder)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "576 image tokens a prompt" in printed
    row = r"^\| (\d+) \| (\d+) \| ([0-9.]+) \| ([0-9.]+) \| (-?[0-9.]+)%"
    rows = re.findall(row, printed, re.M)
    assert [(batch, n) for batch, n, *_ in rows] == [("1", "1"), ("2", "4")]
    assert all(float(bare) > 0 and float(run) > 0 for _, _, bare, run, _ in rows)

    # what the backend ran: every output exactly TOKENS tokens, after 576 image tokens
    generation = GenerationConfig.from_pretrained(folder)
    assert generation.min_new_tokens == generation.max_new_tokens == TOKENS
    processor = AutoProcessor.from_pretrained(folder)
    model = LlavaForConditionalGeneration.from_pretrained(folder)
    samples = select_samples(load_dataset("demo"), 2).samples
    images = [[Image.open(s.image_path).convert("RGB")] for s in samples]
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True)
    inputs = processor(images=images, text=[text, text], return_tensors="pt", padding=True)
    image_tokens = (inputs["input_ids"] == model.config.image_token_id).sum(dim=1)
    assert image_tokens.tolist() == [576, 576]
    with torch.inference_mode():
        output = model.generate(**inputs)
    assert output.shape[1] - inputs["input_ids"].shape[1] == TOKENS


def test_a_run_without_metrics_needs_no_pycocoevalcap(tmp_path: Path) -> None:
    # the GPU machine has no pycocoevalcap, and its 101 MB cannot travel there
    blocked = (
        "import runpy, sys; sys.modules['pycocoevalcap'] = None; "
        "runpy.run_module('cobra_eval', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked, "--method", "baseline", "--num_samples", "4",
         "--metrics", "none", "--output_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=subprocess_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    final = next(tmp_path.glob("run_*/baseline/results_baseline.json"))
    assert len(load_json(final)["results"]) == 4
