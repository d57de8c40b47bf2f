"""Corpus scores at every checkpoint, CIDEr-D's document frequencies kept with the run,
and the rescoring when a run is extended: all checked against pycocoevalcap's own run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cobra_eval.metrics.per_sample import DocumentFrequency
from tests.conftest import World, load_json, run_cli_process

pytestmark = pytest.mark.databases

KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def official(results: list[dict[str, Any]], meteor: bool = True) -> dict[str, Any]:
    """pycocoevalcap's batch evaluation of a results list: corpus scores, per-image CIDEr-D, DF."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.cider.cider_scorer import CiderScorer
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize(
        {r["image_id"]: [{"caption": c} for c in r["reference_captions"]] for r in results}
    )
    res = tok.tokenize({r["image_id"]: [{"caption": r["generated_caption"]}] for r in results})
    out: dict[str, Any] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"Bleu_{n + 1}": bleu[n] for n in range(4)})
    out["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    out["CIDEr"], per_image = Cider().compute_score(gts, res)
    out["per_image_cider"] = dict(zip(gts, per_image, strict=True))
    scorer = CiderScorer(n=4, sigma=6.0)
    for i in gts:
        scorer += (res[i][0], gts[i])
    scorer.compute_doc_freq()
    out["df"] = dict(scorer.document_frequency)
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        m = Meteor()
        try:
            out["METEOR"] = m.compute_score(gts, res)[0]
        finally:
            m.meteor_p.kill()
            m.meteor_p.wait()
    return out


@pytest.mark.slow
def test_every_checkpoint_carries_the_corpus_scores_of_exactly_its_samples(
    world: World, cli
) -> None:
    args = world.run_args("--num_samples", "6", "--checkpoint_interval", "3", "--run_id", "c",
                          "--metrics", "bleu,meteor,rouge,cider")  # fmt: skip
    run = cli(*args)
    assert run.exit_code == 0, run.output
    files = [f for f in world.checkpoints() if not f.name.endswith("_latest.json")]
    assert [load_json(f)["checkpoint_info"]["processed_count"] for f in files] == [3, 6]
    for path in files:
        doc = load_json(path)
        corpus = doc["corpus_metrics"]
        assert corpus["scope"] == "checkpoint" and corpus["n_samples"] == len(doc["results"])
        truth = official(doc["results"])
        for key in KEYS[:-1]:
            assert corpus["scores"][key] == pytest.approx(truth[key], abs=1e-9), (path, key)
        # CIDEr-D keeps the planned set's document frequencies: the mean of the samples so far
        cider = [r["metrics"]["CIDEr"] for r in doc["results"]]
        assert corpus["scores"]["CIDEr"] == pytest.approx(sum(cider) / len(cider), abs=1e-12)
    final = load_json(world.method_dir("c", "baseline") / "results_baseline.json")
    assert final["corpus_metrics"]["scope"] == "final"
    assert final["corpus_metrics"]["n_samples"] == 6
    truth = official(final["results"])
    for key in KEYS:
        assert final["corpus_metrics"]["scores"][key] == pytest.approx(truth[key], abs=1e-9), key
    # the same numbers are in the database, one set per checkpoint and one at the end
    rows = world.rows("SELECT scope, n_samples, COUNT(*) FROM corpus_metric GROUP BY 1, 2")
    assert sorted(rows) == [("checkpoint", 3, 7), ("checkpoint", 6, 7), ("final", 6, 7)]
    # and readable with jq, as the guide promises for the rest of the file
    latest = world.method_dir("c", "baseline") / "checkpoint_baseline_latest.json"
    jq = subprocess.run(["jq", ".corpus_metrics.scores.CIDEr", str(latest)],
                        capture_output=True, text=True, check=True)  # fmt: skip
    assert float(jq.stdout) == pytest.approx(
        load_json(files[-1])["corpus_metrics"]["scores"]["CIDEr"]
    )


def test_document_frequencies_are_stored_and_an_extension_rescores_earlier_samples(
    world: World, cli
) -> None:
    metrics = ("--metrics", "bleu,cider", "--run_id", "x")
    first = cli(*world.run_args("--num_samples", "6", *metrics))
    assert first.exit_code == 0, first.output
    before = dict(world.rows("SELECT image_id, metrics FROM sample_result"))
    more = cli(*world.run_args("--num_samples", "9", *metrics))
    assert more.exit_code == 0, more.output
    assert "Rescored 6 earlier samples of baseline against the 9 planned samples" in more.output
    rows = world.rows(
        "SELECT n_images, n_ngrams, sha256, data, rescored FROM cider_document_frequency "
        "ORDER BY n_images"
    )
    assert [(r[0], json.loads(r[4])) for r in rows] == [(6, {}), (9, {"baseline": 6})]
    final = load_json(world.method_dir("x", "baseline") / "results_baseline.json")
    truth = official(final["results"], meteor=False)
    # the stored frequencies are pycocoevalcap's for the 9 planned samples' references
    stored = DocumentFrequency.from_bytes(rows[1][3])
    assert stored.n_images == 9 and rows[1][1] == len(stored.counts)
    assert stored.counts == truth["df"]
    import hashlib

    assert rows[1][2] == hashlib.sha256(rows[1][3]).hexdigest()
    # every sample, the 6 earlier ones included, now has its batch CIDEr-D of the 9
    after = {i: json.loads(m) for i, m in world.rows("SELECT image_id, metrics FROM sample_result")}
    assert len(after) == 9
    for image_id, cider in truth["per_image_cider"].items():
        assert after[image_id]["CIDEr"] == pytest.approx(cider, abs=1e-12)
    changed = [i for i in before if json.loads(before[i])["CIDEr"] != after[i]["CIDEr"]]
    assert len(changed) == 6  # the rescoring really changed them
    for i in before:  # BLEU does not depend on the set
        assert json.loads(before[i])["Bleu_4"] == after[i]["Bleu_4"]
    narrow = dict(
        world.rows(
            "SELECT r.image_id, v.value FROM metric_value v JOIN sample_result r "
            "ON r.id = v.result_id WHERE v.name = 'CIDEr' AND v.pass_id IS NULL"
        )
    )
    assert narrow == pytest.approx({i: m["CIDEr"] for i, m in after.items()}, abs=1e-12)
    assert final["corpus_metrics"]["scores"]["CIDEr"] == pytest.approx(truth["CIDEr"], abs=1e-9)
    # resuming the finished run rescores nothing
    again = cli(*world.run_args("--num_samples", "9", *metrics))
    assert "Rescored" not in again.output


def test_rouge_added_later_is_filled_in_not_counted_as_zero(world: World, cli) -> None:
    base = ("--method", "baseline", "--run_id", "r")
    first = cli(*world.run_args(*base, "--num_samples", "4", "--metrics", "bleu"))
    assert first.exit_code == 0, first.output
    more = cli(*world.run_args(*base, "--num_samples", "8", "--metrics", "bleu,rouge"))
    assert more.exit_code == 0, more.output
    assert (
        "Rescored 4 earlier samples of baseline (scored without some of bleu, rouge)" in more.output
    )
    assert all(
        "ROUGE_L" in json.loads(m) for (m,) in world.rows("SELECT metrics FROM sample_result")
    )
    results = load_json(world.method_dir("r", "baseline") / "results_baseline.json")["results"]
    [(stored,)] = world.rows(
        "SELECT value FROM corpus_metric WHERE scope = 'final' AND metric = 'ROUGE_L'"
    )
    # the first four samples pooled with their own ROUGE-L, not as 0
    assert stored == pytest.approx(official(results)["ROUGE_L"], abs=1e-12)


def test_a_rouge_only_run_has_corpus_scores_and_is_not_rescored_when_it_continues(
    world: World, cli
) -> None:
    # ROUGE-L pools the samples' own scores: its results keep no statistics, and were
    # neither pooled (no corpus scores at all) nor trusted when the run continued
    base = ("--method", "baseline", "--run_id", "r", "--metrics", "rouge")
    final = world.method_dir("r", "baseline") / "results_baseline.json"
    for n in (4, 8):
        done = cli(*world.run_args(*base, "--num_samples", str(n)))
        assert done.exit_code == 0, done.output
        assert "Rescored" not in done.output
        written = load_json(final)
        assert written["corpus_metrics"]["n_samples"] == n
        expected = official(written["results"])["ROUGE_L"]
        assert written["corpus_metrics"]["scores"]["ROUGE_L"] == pytest.approx(expected, abs=1e-12)


def test_metrics_asked_for_without_java_are_reported_unavailable(
    world: World, tmp_path: Path
) -> None:
    no_java = tmp_path / "bin"  # a PATH without java
    no_java.mkdir()
    args = world.run_args("--num_samples", "3", "--metrics", "bleu,rouge")
    done = run_cli_process(*args, PATH=str(no_java))
    assert done.returncode == 0, done.stderr
    printed = done.stdout + done.stderr
    for name in ("BLEU", "ROUGE"):
        assert f"{name} unavailable: Java is not installed (the COCO scorers need it)" in printed
    assert "Corpus metrics:" not in printed  # a table of no scores says nothing
    assert world.rows("SELECT count(*) FROM sample_result WHERE status = 'ok'") == [(3,)]


def test_metrics_added_later_are_filled_in_and_passes_rescored(world: World, cli) -> None:
    base = ("--method", "scratchpad_compare", "--num_samples", "4", "--run_id", "m")
    first = cli(*world.run_args(*base, "--metrics", "bleu"))
    assert first.exit_code == 0, first.output
    again = cli(*world.run_args(*base, "--metrics", "cider"))
    assert again.exit_code == 0, again.output
    assert "Rescored 4 earlier samples of scratchpad_compare" in again.output
    for (metrics,) in world.rows("SELECT metrics FROM sample_result"):
        assert {"Bleu_4", "CIDEr"} <= set(json.loads(metrics))  # BLEU kept, CIDEr added
    passes = world.rows("SELECT metrics FROM sample_pass")
    assert len(passes) == 12
    assert all({"Bleu_4", "CIDEr"} <= set(json.loads(m)) for (m,) in passes)
    # what the method derives from pass metrics follows them
    for (metadata,) in world.rows("SELECT metadata FROM sample_result"):
        meta = json.loads(metadata)
        by_name = {p["name"]: p["metrics"] for p in meta["passes"]}
        deltas = meta["pass_comparison"]["delta_vs_direct"]["CIDEr"]
        for name, delta in deltas.items():
            assert delta == pytest.approx(by_name[name]["CIDEr"] - by_name["direct"]["CIDEr"])
