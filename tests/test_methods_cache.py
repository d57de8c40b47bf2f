"""The four methods on the demo, the generation cache, and prompt templates as data."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from cobra_eval.backends import BackendOptions, GenerationRequest
from cobra_eval.config import GenerationParams
from cobra_eval.generation import CachedGenerator
from cobra_eval.runner import CLAIM_AHEAD
from cobra_eval.store import Store
from cobra_eval.store.checkpoint_io import ResultRecord
from tests.conftest import World, run_cli_process
from tests.stand_in import DELAY_ENV, EchoBackend
from tests.test_snapshot_export import new_run, open_store

pytestmark = pytest.mark.databases

GEN_LINE = re.compile(
    r"^  (\S+): (\d+) generations this run \((\d+) by the model, (\d+) from cache\)", re.M
)


def generation_counts(output: str) -> dict[str, tuple[int, int, int]]:
    return {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in GEN_LINE.finditer(output)}


def test_method_all_on_the_demo_reuses_generations(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = run_cli_process(
        "--method", "all", "--num_samples", "20", "--metrics", "none", "--output_dir", str(out),
        timeout=600, COBRA_EVAL_CACHE=str(tmp_path / "cache"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    import sqlite3

    con = sqlite3.connect(out / "cobra_eval.db")
    per_method = dict(con.execute("SELECT method, COUNT(*) FROM sample_result GROUP BY method"))
    assert per_method == {"baseline": 20, "scratchpad": 20, "llava_cot": 20,
                          "scratchpad_compare": 20}  # fmt: skip
    passes = con.execute(
        "SELECT COUNT(p.id) FROM sample_result r JOIN sample_pass p ON p.result_id = r.id "
        "WHERE r.method = 'scratchpad_compare' GROUP BY r.id"
    ).fetchall()
    assert passes == [(3,)] * 20
    counts = generation_counts(done.stdout)
    naive = sum(total for total, _, _ in counts.values())
    by_model = sum(model for _, model, _ in counts.values())
    assert naive == 20 * (1 + 1 + 1 + 3)
    assert by_model < naive
    # the direct and scratchpad passes of scratchpad_compare come from baseline and scratchpad
    assert counts["scratchpad_compare"] == (60, 20, 40)
    hits = con.execute(
        "SELECT p.name, COUNT(*) FROM sample_result r JOIN sample_pass p ON p.result_id = r.id "
        "WHERE r.method = 'scratchpad_compare' AND json_extract(r.metadata, '$.passes[' || "
        "p.pass_index || '].cached') GROUP BY p.name ORDER BY p.name"
    ).fetchall()
    assert hits == [("direct", 20), ("scratchpad", 20)]


def test_a_rerun_hits_the_cache_and_no_cache_does_not(world: World, cli) -> None:
    first = cli(*world.run_args("--num_samples", "5", "--method", "scratchpad"))
    assert generation_counts(first.output)["scratchpad"] == (5, 5, 0)
    again = cli(*world.run_args("--num_samples", "5", "--method", "scratchpad", "--fresh"))
    assert generation_counts(again.output)["scratchpad"] == (5, 0, 5)
    assert again.output.count("samples (Cached)...") == 5
    forced = cli(*world.run_args("--num_samples", "5", "--method", "scratchpad", "--fresh",
                                 "--no_cache"))  # fmt: skip
    assert generation_counts(forced.output)["scratchpad"] == (5, 5, 0)
    assert "(Cached)" not in forced.output


def test_an_image_met_again_a_batch_later_comes_from_the_cache(world: World, cli) -> None:
    # every image the same bytes: the next batch starts before the first one's outputs are
    # written to the cache in the background, and must still find them
    images = sorted(world.dataset.parent.glob("*.png"))
    for image in images[1:]:
        image.write_bytes(images[0].read_bytes())
    result = cli(*world.run_args("--num_samples", "6", "--batch_size", "1"))
    assert result.exit_code == 0, result.output
    assert generation_counts(result.output)["baseline"] == (6, 1, 5)
    assert result.output.count("samples (Cached)...") == 5


def test_another_model_prompt_or_parameter_never_hits(world: World, cli, tmp_path: Path) -> None:
    assert cli(*world.run_args("--num_samples", "4")).exit_code == 0
    for extra in (["--max_new_tokens", "64"], ["--seed", "1"], ["--model", "echo-v2"]):
        result = cli(*world.run_args("--num_samples", "4", *extra))
        assert result.exit_code == 0, result.output
        assert generation_counts(result.output)["baseline"] == (4, 4, 0), extra
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"baseline": {"caption": "Write a very short caption."}}))
    result = cli(*world.run_args("--num_samples", "4", "--prompts", str(prompts)))
    assert generation_counts(result.output)["baseline"] == (4, 4, 0)
    raw = world.rows(
        "SELECT p.prompt, m.config FROM sample_pass p JOIN sample_result r ON r.id = p.result_id "
        "JOIN run_method m ON m.run_id = r.run_id AND m.method = r.method"
    )
    short = "Write a very short caption."
    used = {prompt for prompt, config in raw if json.loads(config)["prompts"]["caption"] == short}
    assert used == {short}


def test_prompts_file_changes_the_fingerprint_and_methods_show(
    world: World, cli, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(
        json.dumps({"scratchpad_compare": {"refine": "Fix {draft} using {scratchpad}."}})
    )
    shown = cli("methods", "--show", "--prompts", str(prompts))
    assert shown.exit_code == 0
    assert "  [refine]\n    Fix {draft} using {scratchpad}.\n" in shown.output
    default = cli("methods")
    line = re.compile(r"^scratchpad_compare: .*config hash (\w+)$", re.M)
    assert line.search(default.output)[1] != line.search(shown.output)[1]
    assert (
        "scratchpad_compare: passes direct, scratchpad, refine; prompts version 1" in default.output
    )
    cli(*world.run_args("--num_samples", "2", "--method", "scratchpad_compare", "--run_id", "r"))
    result = cli(*world.run_args("--num_samples", "2", "--method", "scratchpad_compare",
                                 "--run_id", "r", "--prompts", str(prompts)))  # fmt: skip
    assert result.exit_code == 1
    assert "method.prompts.refine:" in result.output


def test_bad_prompts_files_are_clear_errors(world: World, cli, tmp_path: Path) -> None:
    cases = {
        "not json": "not valid JSON",
        json.dumps(["x"]): "expected an object of methods",
        json.dumps({"baseline": {"title": "x"}}): "prompts for baseline: unknown template 'title'",
        json.dumps({"nomethod": {"a": "b"}}): "names unknown method(s): nomethod",
        json.dumps({"scratchpad_compare": {"refine": "x"}}): "must contain {draft}, {scratchpad}",
        json.dumps({"baseline": {"caption": "  "}}): "template 'caption' is empty",
    }  # fmt: skip
    for text, message in cases.items():
        path = tmp_path / "p.json"
        path.write_text(text)
        result = cli(*world.run_args("--num_samples", "2", "--prompts", str(path)))
        assert result.exit_code == 1, text
        assert message in result.output, (text, result.output)
    assert not world.db_exists()


PARSE_LINE = re.compile(r"^  (\S+): .*; parse fallbacks (\d+), empty (\d+) \(", re.M)


def test_the_summary_counts_parse_fallbacks_and_empty_captions(world: World, cli) -> None:
    done = cli(*world.run_args("--num_samples", "4", "--method", "llava_cot"))
    assert done.exit_code == 0, done.output
    # the stand-in answers without LLaVA-CoT's tags: each caption is a fallback
    counts = {m[1]: (int(m[2]), int(m[3])) for m in PARSE_LINE.finditer(done.output)}
    assert counts == {"llava_cot": (4, 0)}
    with open_store(world) as store:
        new_run(store, [1, 2, 3, 4, 5], total=5, method="scratchpad")
        statuses = ["ok", "empty", "fallback:no_marker", "fallback:no_refine", "empty"]
        for image_id, status in enumerate(statuses, 1):
            failed = {"status": "failed", "error": "x"} if image_id == 5 else {}
            result = ResultRecord(image_id=image_id, reference_captions=["r"],
                                  generated_caption="c" if status != "empty" else "",
                                  metadata={"parse_status": status, **failed})  # fmt: skip
            assert store.commit_result("r", "scratchpad", result, worker="w:1", latency_s=None)
        # a failed sample's status is not a parse outcome
        assert store.parse_counts("r", "scratchpad") == (2, 1)


def test_requests_looked_up_ahead_need_no_query_on_the_models_thread(world: World) -> None:
    """prefetch hashes and looks up in the background: hits come back cached, misses go to
    the model, and the batch itself asks the database nothing."""
    images = sorted(world.dataset.parent.glob("*.png"))[:4]
    requests = [GenerationRequest(image_path=image, prompt="Describe it.") for image in images]
    params = GenerationParams()
    echo = EchoBackend(BackendOptions(model="echo-v1"))
    with open_store(world) as store:
        generator = CachedGenerator(echo, store, echo.identity(), enabled=True)
        generator.generate(requests[:2], params)
        generator.save()
        asked: list[tuple[str, int]] = []
        looked_up = store.cached_outputs

        def cached_outputs(keys: Sequence[str]) -> dict[str, str]:
            asked.append((threading.current_thread().name, len(keys)))
            return looked_up(keys)

        store.cached_outputs = cached_outputs  # type: ignore[method-assign]
        generator.prefetch(requests, params)
        deadline = time.monotonic() + 30
        while not asked and time.monotonic() < deadline:
            time.sleep(0.01)
        # the lookup is under way: close waits for it to finish (and hashes nothing more)
        generator.close()
        assert [(name.startswith("hash-images"), n) for name, n in asked] == [(True, 4)]
        out = generator.generate(requests, params)
    assert asked[1:] == []
    assert [o.cached for o in out] == [True, True, False, False]
    assert [o.output for o in out] == echo.generate(requests, params)


def test_a_run_looks_up_only_its_first_batch_on_the_models_thread(
    world: World, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every later batch, the first of each claimed block too, was looked up ahead."""
    threads: list[str] = []
    looked_up = Store.cached_outputs

    def cached_outputs(self: Store, keys: Sequence[str]) -> dict[str, str]:
        threads.append(threading.current_thread().name)
        return looked_up(self, keys)

    monkeypatch.setattr(Store, "cached_outputs", cached_outputs)
    # 12 samples in batches of 2: blocks of CLAIM_AHEAD batches, the second claimed ahead
    args = world.run_args("--num_samples", "12", "--batch_size", "2")
    # each batch takes 0.25 s: the next block's lookup, made meanwhile, takes milliseconds
    result = cli(*args, env={DELAY_ENV: "0.25"})
    assert result.exit_code == 0, result.output
    assert generation_counts(result.output)["baseline"] == (12, 12, 0)
    assert CLAIM_AHEAD * 2 < 12
    assert threads.count("MainThread") == 1, threads
