"""`make bench`'s RESULTS.md: the targets table is read from what the benchmarks print."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from transformers import GenerationConfig, LlavaConfig

from benchmarks.report import GPU_SECTION, TARGETS, parse_log, render
from benchmarks.scaled_overhead import TOKENS, build_model
from cobra_eval.backends import BackendOptions, GenerationRequest, create_backend
from cobra_eval.config import GenerationParams
from cobra_eval.datasets import load_dataset, select_samples
from cobra_eval.methods.baseline import PROMPT

LOG = """\
== python -m benchmarks.store_cost
per-sample commit (result + 1 pass + 14 metric rows), SQLite, 500 commits: median 0.81 ms (min 0.74, max 5.85)
the same in batches of 16 (one transaction a batch, as a run commits), per sample: median 0.13 ms (min 0.12, max 0.58)
checkpoint export of 1000 results: median 26.50 ms (min 25.10, max 30.00), 26.5 us/result
== python -m benchmarks.run_overhead
tool overhead (metrics none vs bare generation): loop 4.2%, whole 9.0%
demo run as started from the shell, --metrics bleu,meteor,rouge,cider: 18.84 s (min 18.66, max 19.97); 1.989x the --metrics none run
Traceback (most recent call last):
"""  # noqa: E501


def rows_of(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4:
            rows[cells[0]] = cells[1:]
    return rows


def test_each_target_is_read_from_its_line_met_or_not_or_reported_missing() -> None:
    outputs = parse_log(LOG)
    assert list(outputs) == ["store_cost", "run_overhead"]
    assert "Traceback" not in outputs["run_overhead"]
    page = render(outputs, datetime(2026, 11, 29, 12, 0))
    rows = rows_of(page)
    by_what = {t.what: rows[t.what] for t in TARGETS}
    commit, batched, export_1k = (by_what[t.what] for t in TARGETS[:3])
    assert commit == ["<= 1 ms", "0.81 ms (0.74-5.85)", "yes"]
    assert batched == ["<= 1 ms", "0.13 ms (0.12-0.58)", "yes"]
    assert export_1k == ["<= 20 ms", "26.50 ms (25.10-30.00)", "no"]
    overhead = next(v for w, v in by_what.items() if w.startswith("tool overhead"))
    assert overhead == ["<= 5%", "4.2%", "yes"]
    overlap = next(v for w, v in by_what.items() if w.startswith("demo run, all metrics"))
    assert overlap == ["<= 1.15x", "1.989x", "no"]
    # a benchmark that did not run is not hidden: its targets say so
    memory = next(v for w, v in by_what.items() if w.startswith("memory of a 100,000"))
    assert memory[1:] == ["not measured", "-"]
    assert "`python -m benchmarks.store_cost`" in page and "2026-11-29 12:00" in page


def test_the_scaled_benchmark_model_loads_as_any_local_model_with_fixed_length_outputs(
    tmp_path: Path,
) -> None:
    folder = build_model(tmp_path / "model", width=128)
    backend = create_backend("hf", BackendOptions(model=str(folder)))
    sample = select_samples(load_dataset("demo"), 2).samples
    requests = [GenerationRequest(image_path=s.image_path, prompt=PROMPT) for s in sample]
    outputs = backend.generate(requests, GenerationParams(max_new_tokens=TOKENS))
    assert len(outputs) == 2 and all(isinstance(o, str) and o for o in outputs)
    loaded = LlavaConfig.from_pretrained(folder).text_config
    assert (loaded.hidden_size, loaded.num_hidden_layers) == (128, 4)
    assert GenerationConfig.from_pretrained(folder).min_new_tokens == TOKENS


def test_gpu_figures_are_included_marked_with_their_device_or_said_to_be_missing() -> None:
    outputs = parse_log(LOG)
    without = render(outputs, datetime(2026, 12, 2, 12, 0))
    assert "No GPU has been lent" in without and GPU_SECTION not in without
    gpu = "device: NVIDIA H200, 143771 MiB, 580.159.04\n| 32 | 128 | 15.10 | 14.90 | 1.3% |\n"
    page = render(outputs, datetime(2026, 12, 2, 12, 0), gpu)
    assert "No GPU has been lent" not in page
    section = page.split(f"## {GPU_SECTION}", 1)[1]
    assert "`bash benchmarks/gpu_scale.sh`" in section and gpu.rstrip() in section
