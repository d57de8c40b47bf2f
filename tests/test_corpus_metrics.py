"""Corpus metrics at the end of a run: the official scorers' numbers, stored and printed."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import ClassVar

import pytest

from cobra_eval.backends import BackendOptions, GenerationRequest
from cobra_eval.config import GenerationParams
from cobra_eval.errors import BackendError
from cobra_eval.metrics import score_corpus
from tests.conftest import World, run_cli_process
from tests.stand_in import EchoBackend

pytestmark = pytest.mark.databases

CANDIDATES = {
    1: "a red circle to the left of a blue square.",
    2: "A green square\nabove a red circle",  # a line break must not shift later captions
    3: "two ||| cats",  # METEOR's separator must not split it
    4: "a yellow triangle below a purple circle",
}
REFERENCES = {
    1: ["a red circle to the left of a blue square", "a blue square right of a red circle"],
    2: ["a green square above a red circle", "a red circle below a green square"],
    3: ["two cats on a sofa", "a pair of cats"],
    4: ["a yellow triangle below a purple circle", "a purple circle above a yellow triangle"],
}


def official(metric: str) -> float:
    """pycocoevalcap's own pipeline on the same input (its tokenizer, its scorers)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    # pycocoevalcap only replaces '\n'; give it clean single-line input to compare with
    gts = tok.tokenize({i: [{"caption": c} for c in refs] for i, refs in REFERENCES.items()})
    res = tok.tokenize(
        {i: [{"caption": " ".join(c.replace("|||", " ").split())}] for i, c in CANDIDATES.items()}
    )
    if metric == "CIDEr":
        return float(Cider().compute_score(gts, res)[0])
    if metric == "ROUGE_L":
        return float(Rouge().compute_score(gts, res)[0])
    return float(Bleu(4).compute_score(gts, res, verbose=0)[0][3])


def test_java_free_scores_equal_pycocoevalcaps_own_run() -> None:
    ours = score_corpus(CANDIDATES, REFERENCES, ("bleu", "rouge", "cider"))
    assert ours.n == 4
    for metric, key in (("CIDEr", "CIDEr"), ("ROUGE_L", "ROUGE_L"), ("Bleu_4", "Bleu_4")):
        assert ours.scores[key] == pytest.approx(official(metric), abs=1e-12), metric


@pytest.mark.parametrize("metrics", [("cider",), ("meteor", "cider")])
def test_frequencies_counted_while_the_model_loads_are_the_scorers_own(metrics) -> None:
    from cobra_eval.metrics.per_sample import PreparedScoring, SampleScorer

    alone = SampleScorer(REFERENCES, ("cider",))
    own = alone.document_frequency
    prepared = PreparedScoring(metrics, REFERENCES)
    try:
        counted = prepared.document_frequency()
        assert counted is not None and own is not None
        assert counted.to_bytes() == own.to_bytes()
        assert counted.n_images == len(REFERENCES)
        items = list(CANDIDATES.items())
        scored = SampleScorer(REFERENCES, metrics, prepared=prepared).score(items)
        assert [s.scores["CIDEr"] for s in scored] == [
            s.scores["CIDEr"] for s in alone.score(items)
        ]
    finally:
        prepared.close()


def test_spice_is_reported_unavailable_not_crashed() -> None:
    out = score_corpus(CANDIDATES, REFERENCES, ("spice",))
    assert out.scores == {}
    assert "stanford-corenlp-3.6.0" in out.unavailable["spice"]


@pytest.mark.slow
def test_meteor_runs_and_its_jvm_is_gone_afterwards() -> None:
    out = score_corpus(CANDIDATES, REFERENCES, ("meteor",))
    assert 0.3 < out.scores["METEOR"] < 1.0
    assert meteor_jvms() == []


def meteor_jvms() -> list[str]:
    """This process's METEOR scoring JVMs (other processes' do not count)."""
    import os
    import subprocess

    found = subprocess.run(
        ["pgrep", "-P", str(os.getpid()), "-f", r"meteor-1\.5\.jar - - -stdio"],
        capture_output=True, text=True,
    )  # fmt: skip
    return found.stdout.split()


class MeteorWitness(EchoBackend):
    """The stand-in backend, noting whether METEOR's JVM starts while it is being created
    (as a model loads), without waiting for it."""

    seen: ClassVar[list[bool]] = []

    def __init__(self, options: BackendOptions):
        import time

        deadline = time.monotonic() + 60
        while not meteor_jvms() and time.monotonic() < deadline:
            time.sleep(0.05)
        MeteorWitness.seen.append(bool(meteor_jvms()))
        if options.model == "broken":
            raise BackendError("the model cannot be loaded")
        super().__init__(options)


@pytest.mark.slow
@pytest.mark.sqlite_only
def test_meteors_jvm_loads_while_the_model_does_and_is_gone_after_a_run_or_an_error(
    world: World, cli
) -> None:
    MeteorWitness.seen.clear()
    witness = ["--backend", f"{__name__}:MeteorWitness", "--metrics", "meteor"]
    done = cli(*world.run_args("--num_samples", "3", *witness))
    assert done.exit_code == 0, done.output
    # it started while the backend (and so the model) was still being created
    assert MeteorWitness.seen == [True]
    assert len(world.rows("SELECT value FROM corpus_metric WHERE metric = 'METEOR'")) >= 1
    assert meteor_jvms() == []
    failed = cli(*world.run_args("--num_samples", "3", *witness, "--model", "broken", "--fresh"))
    assert failed.exit_code == 1 and "the model cannot be loaded" in failed.output
    assert MeteorWitness.seen == [True, True]
    assert meteor_jvms() == []  # the JVM started for the failed run is stopped too


class GenerationClock(EchoBackend):
    """The stand-in backend, noting when each of its generate calls returned."""

    returned: ClassVar[list[datetime]] = []

    def generate(
        self, requests: Sequence[GenerationRequest], params: GenerationParams
    ) -> list[str]:
        answers = super().generate(requests, params)
        GenerationClock.returned.append(datetime.now(timezone.utc))
        return answers


@pytest.mark.slow
@pytest.mark.sqlite_only
def test_the_model_keeps_generating_while_meteors_jvm_loads(world: World, cli) -> None:
    """Scoring never holds up generation: batches wait to be scored, the model does not."""
    GenerationClock.returned.clear()
    clock = ["--backend", f"{__name__}:GenerationClock", "--metrics", "meteor"]
    done = cli(*world.run_args("--num_samples", "40", "--batch_size", "4", *clock))
    assert done.exit_code == 0, done.output
    [(first,)] = world.rows("SELECT MIN(created_at) FROM sample_result")
    first_commit = datetime.fromisoformat(first).replace(tzinfo=timezone.utc)
    # no batch can be scored (nor committed) before the JVM has loaded, seconds after the
    # run began; the model generated all 10 batches meanwhile
    assert len(GenerationClock.returned) == 10
    assert max(GenerationClock.returned) < first_commit
    scored = "SELECT COUNT(DISTINCT result_id) FROM metric_value WHERE name = 'METEOR'"
    assert world.rows(scored) == [(40,)]


def test_meteor_scores_the_same_in_a_jvm_whose_default_locale_writes_decimal_commas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cobra_eval.metrics.meteor import MeteorProcess

    pairs = [("a dog runs on the grass", ["a dog runs on grass", "a brown dog"])]
    with MeteorProcess() as meteor:
        stats = meteor.stats_many(pairs)
        expected = meteor.evaluate(stats)
    # as on a machine with a German locale: METEOR 1.5 would fail to read "5.0"
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Duser.language=de -Duser.country=DE")
    with MeteorProcess() as meteor:
        assert meteor.stats_many(pairs) == stats
        assert meteor.evaluate(stats) == expected


def test_a_run_prints_and_stores_corpus_metrics(world: World, cli) -> None:
    result = cli(*world.run_args("--num_samples", "8", "--metrics", "bleu,cider,spice"))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index("Corpus metrics:")
    header = lines[start + 1].split()
    assert header == ["method", "n", "Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"]
    row = lines[start + 2].split()
    assert row[:2] == ["baseline", "8"]
    stored = dict(world.rows("SELECT metric, value FROM corpus_metric WHERE scope = 'final'"))
    assert set(stored) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"}
    assert float(row[-1]) == pytest.approx(stored["CIDEr"], abs=5e-4)
    assert re.search(r"^SPICE unavailable: SPICE needs stanford-corenlp", result.output, re.M)
    assert world.rows("SELECT DISTINCT n_samples FROM corpus_metric") == [(8,)]


def test_unknown_metric_is_a_clear_error(world: World, cli) -> None:
    result = cli(*world.run_args("--num_samples", "2", "--metrics", "bleu,wer"))
    assert result.exit_code == 1
    assert "unknown metric wer; choose from bleu, meteor, rouge, cider, spice" in result.output
    assert not world.db_exists()


def test_resuming_a_finished_run_reuses_its_scores_and_extending_rescores(
    world: World, cli
) -> None:
    args = world.run_args("--num_samples", "6", "--metrics", "bleu,cider")
    first = cli(*args)
    table = first.output[first.output.index("Corpus metrics:") :].splitlines()[:3]
    rows = world.rows("SELECT COUNT(*) FROM corpus_metric")
    again = cli(*args, "--resume_from_checkpoint")
    assert again.output[again.output.index("Corpus metrics:") :].splitlines()[:3] == table
    assert world.rows("SELECT COUNT(*) FROM corpus_metric") == rows  # nothing scored again
    more = cli(*world.run_args("--num_samples", "9", "--metrics", "bleu,cider",
                               "--resume_from_checkpoint"))  # fmt: skip
    assert more.exit_code == 0
    assert world.rows("SELECT DISTINCT n_samples FROM corpus_metric ORDER BY 1") == [(6,), (9,)]


def test_score_rescores_a_file_and_a_stored_run(world: World, cli) -> None:
    import json

    run = cli(*world.run_args("--num_samples", "6", "--metrics", "bleu,cider", "--run_id", "s"))
    assert run.exit_code == 0, run.output
    stored = dict(world.rows("SELECT image_id, metrics FROM sample_result"))
    (run_cider,) = world.rows("SELECT value FROM corpus_metric WHERE metric = 'CIDEr'")[0]
    final = world.out / "s" / "baseline" / "results_baseline.json"
    result = cli("score", str(final), "--metrics", "bleu,cider", "--per_sample", "--format", "json")
    assert result.exit_code == 0, result.output
    scored = json.loads(result.output)
    assert scored["n"] == 6 and scored["method"] == "baseline"
    assert scored["corpus"]["CIDEr"] == pytest.approx(run_cider, abs=1e-12)
    # a finished run's per-sample scores are the batch scores of its planned set
    for image_id, metrics in scored["per_sample"].items():
        assert metrics == pytest.approx(json.loads(stored[int(image_id)]), abs=1e-12)
    assert world.rows("SELECT COUNT(*) FROM corpus_metric WHERE scope = 'rescore'") == [(0,)]
    again = cli("score", "--run", "s", "--output_dir", str(world.out), *world.db_args,
                "--metrics", "rouge")  # fmt: skip
    assert again.exit_code == 0, again.output
    assert "ROUGE_L" in again.output
    assert world.rows("SELECT metric FROM corpus_metric WHERE scope = 'rescore'") == [("ROUGE_L",)]
    # ROUGE-L is added to every sample; the BLEU and CIDEr-D scores stay as they were
    after = dict(world.rows("SELECT image_id, metrics FROM sample_result"))
    for image_id, metrics in after.items():
        metrics = json.loads(metrics)
        assert 0 < metrics.pop("ROUGE_L") <= 1
        assert metrics == json.loads(stored[image_id])
    names = world.rows("SELECT DISTINCT name FROM metric_value WHERE pass_id IS NULL ORDER BY 1")
    assert names == [("Bleu_1",), ("Bleu_2",), ("Bleu_3",), ("Bleu_4",), ("CIDEr",), ("ROUGE_L",)]


@pytest.mark.slow
@pytest.mark.sqlite_only
def test_score_gives_a_runs_meteor_scores_again(world: World, cli) -> None:
    import json

    run = cli(*world.run_args("--num_samples", "6", "--metrics", "meteor", "--run_id", "m"))
    assert run.exit_code == 0, run.output
    stored = dict(world.rows("SELECT image_id, metrics FROM sample_result"))
    (run_meteor,) = world.rows("SELECT value FROM corpus_metric WHERE metric = 'METEOR'")[-1]
    final = world.out / "m" / "baseline" / "results_baseline.json"
    # each METEOR JVM loaded the paraphrase entries of its own set of references
    result = cli("score", str(final), "--metrics", "meteor", "--per_sample", "--format", "json")
    assert result.exit_code == 0, result.output
    scored = json.loads(result.output)
    assert scored["corpus"]["METEOR"] == run_meteor
    for image_id, metrics in scored["per_sample"].items():
        assert metrics == json.loads(stored[int(image_id)])


def test_score_fails_when_nothing_can_be_scored(world: World, cli, tmp_path) -> None:
    run = cli(*world.run_args("--num_samples", "3", "--run_id", "j"))
    assert run.exit_code == 0, run.output
    final = world.out / "j" / "baseline" / "results_baseline.json"
    no_java = tmp_path / "bin"  # a PATH without java
    no_java.mkdir()
    done = run_cli_process("score", str(final), "--metrics", "bleu", PATH=str(no_java))
    assert done.returncode == 1
    assert "nothing could be scored: BLEU unavailable: Java is not installed" in done.stderr


def test_score_needs_exactly_one_source(world: World, cli, tmp_path) -> None:
    neither = cli("score")
    assert neither.exit_code == 1 and "give either a results FILE or --run RUN" in neither.output
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    result = cli("score", str(bad))
    assert result.exit_code == 1 and "not valid JSON" in result.output
