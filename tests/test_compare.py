"""Comparing methods and runs: paired scores, bootstrap intervals and wins, with known answers."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from cobra_eval.analysis.compare import (
    METRIC_KEYS,
    compare_run,
    compare_scores,
    compare_sides,
    comparison_table,
)
from cobra_eval.analysis.resampling import bleu_count_matrix, pooled_bleu_rows
from cobra_eval.errors import CobraEvalError
from cobra_eval.metrics.pooling import mean, pooled_bleu
from cobra_eval.metrics.rescore import rescore_stored
from cobra_eval.store import Store, resolve_url
from cobra_eval.store.scores import StoredScore, stored_scores
from tests.conftest import World

pytestmark = pytest.mark.databases

METRICS = ("--metrics", "bleu,rouge,cider")
SCORED = [k for k in METRIC_KEYS if k != "METEOR"]


def build(world: World, cli: Any, run_id: str, *extra: str) -> None:
    result = cli(*world.run_args("--num_samples", "30", *METRICS, "--run_id", run_id, *extra))
    assert result.exit_code == 0, result.output


def open_store(world: World) -> Store:
    return Store.open(resolve_url(world.url or str(world.db)))


def random_comps(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    """BLEU statistics as BleuScorer leaves them: lengths, guesses, clipped matches (some 0)."""
    comps = []
    for _ in range(n):
        testlen = int(rng.integers(1, 20))
        guess = [max(testlen - k, 0) for k in range(4)]
        comps.append(
            {
                "testlen": testlen,
                "reflen": int(rng.integers(1, 25)),
                "guess": guess,
                "correct": [int(rng.integers(0, g + 1)) for g in guess],
            }
        )
    return comps


def test_the_vectorised_bleu_is_pooled_bleu_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    for n in (1, 2, 5, 40, 300):
        comps = random_comps(rng, n)
        counts = bleu_count_matrix(comps)
        draws = rng.integers(0, n, size=(50, n))  # resamples, as the bootstrap draws them
        rows = pooled_bleu_rows(counts[draws].sum(axis=1))
        for draw, row in zip(draws, rows, strict=True):
            assert row.tolist() == pooled_bleu([comps[i] for i in draw])
        assert pooled_bleu_rows(counts.sum(axis=0)).tolist() == [pooled_bleu(comps)]
    # both sides of the brevity penalty, and n-grams nobody matched
    short = {"testlen": 3, "reflen": 9, "guess": [3, 2, 1, 0], "correct": [3, 1, 0, 0]}
    long = {"testlen": 9, "reflen": 3, "guess": [9, 8, 7, 6], "correct": [2, 0, 0, 0]}
    for comps in ([short], [long], [short, long]):
        total = bleu_count_matrix(comps).sum(axis=0)
        assert pooled_bleu_rows(total).tolist() == [pooled_bleu(comps)]


def test_a_method_against_itself_or_a_rerun_differs_by_nothing(world: World, cli: Any) -> None:
    build(world, cli, "r1", "--method", "all")
    # the same configuration again: the generation cache gives the same captions
    build(world, cli, "r2", "--method", "all", "--fresh")
    with open_store(world) as store:
        methods = [p.method for p in store.method_progress("r1")]
        itself = compare_sides(store, ("r1", "baseline"), ("r1", "baseline"))
        rerun = compare_run(store, "r1", against="r2")
    assert [(c.a, c.b) for c in rerun] == [(f"r1/{m}", f"r2/{m}") for m in methods]
    for comparison in (itself, *rerun):
        assert (comparison.shared, comparison.only_a, comparison.only_b) == (30, 0, 0)
        assert [m.metric for m in comparison.metrics] == SCORED
        assert comparison.notes == []  # same planned set: CIDEr-D is comparable
        for m in comparison.metrics:
            assert m.level == "corpus" and m.n == 30
            assert m.a == m.b and m.diff == 0.0
            assert m.ci_low <= 0.0 <= m.ci_high and not m.excludes_zero
            assert (m.wins, m.ties, m.losses) == (0, 30, 0)
    lines = comparison_table([itself])
    assert lines[0] == (
        "A = r1/baseline vs B = r1/baseline: 30 shared images, bootstrap 1000 (seed 0)"
    )
    assert lines[1].split() == ["metric", "level", "n", "A", "B", "B-A", "95%", "CI", "W/T/L"]
    for line, key in zip(lines[2:], SCORED, strict=True):
        assert line.split()[0] == key
        assert line.endswith("[+0.0000, +0.0000]  0/30/0"), line
    assert len(lines) == 2 + len(SCORED)  # no '*' footnote: nothing excludes 0


def test_the_same_captions_in_a_smaller_planned_set_differ_only_in_cider(
    world: World, cli: Any
) -> None:
    build(world, cli, "r1", "--method", "baseline")
    small = cli(*world.run_args("--num_samples", "20", *METRICS, "--run_id", "r3", "--fresh"))
    assert small.exit_code == 0, small.output
    with open_store(world) as store:
        (c,) = compare_run(store, "r1", against="r3", bootstrap=200)
    assert (c.shared, c.only_a, c.only_b) == (20, 10, 0)
    m = {x.metric: x for x in c.metrics}
    assert all(m[k].diff == 0 and m[k].ties == 20 for k in SCORED if k != "CIDEr")
    # CIDEr-D's document frequencies come from the planned set: 30 images, then 20
    assert m["CIDEr"].diff != 0 and m["CIDEr"].ties < 20
    assert c.notes == [
        "CIDEr-D of r1/baseline was scored against the document frequencies of 30 planned "
        "images, of r3/baseline against 20 (or another planned set): a caption's CIDEr-D "
        "depends on them, so part of the CIDEr difference may come from the sets, not the "
        "captions"
    ]
    # identical captions, yet an interval that excludes 0: the reason the note is there
    assert m["CIDEr"].excludes_zero
    assert f"  note: {c.notes[0]}" in comparison_table([c])


def add_reference_method(store: Store, run_id: str) -> None:
    """A method whose caption is each image's first reference: better on every sample."""
    baseline = store.method_progress(run_id, "baseline")[0]
    store.ensure_method(
        run_id, "reference", config=baseline.config, fingerprint=baseline.fingerprint,
        settings=baseline.settings, total=baseline.total_planned,
    )  # fmt: skip
    for result in store.results(run_id, "baseline"):
        copy = result.model_copy(
            update={"generated_caption": result.reference_captions[0], "metrics": {},
                    "reasoning_trace": "", "metadata": {}}
        )  # fmt: skip
        assert store.commit_result(run_id, "reference", copy, worker="test", latency_s=None)
    rescore_stored(store, run_id, "reference", ("bleu", "rouge", "cider"))


def test_a_reference_caption_wins_on_every_sample_and_its_interval_excludes_zero(
    world: World, cli: Any
) -> None:
    build(world, cli, "r1", "--method", "baseline")
    with open_store(world) as store:
        add_reference_method(store, "r1")
        (better,) = compare_run(store, "r1", methods=["baseline", "reference"], bootstrap=500)
        worse = compare_sides(store, ("r1", "reference"), ("r1", "baseline"), bootstrap=500)
    assert (better.a, better.b, better.shared, better.bootstrap) == (
        "r1/baseline", "r1/reference", 30, 500,
    )  # fmt: skip
    assert better.notes == []  # rescored against the same 30 references: the same frequencies
    by_metric = {m.metric: m for m in better.metrics}
    assert list(by_metric) == SCORED
    for key in ("CIDEr", "Bleu_4"):
        m = by_metric[key]
        assert m.excludes_zero and 0 < m.ci_low <= m.diff <= m.ci_high, m
    for m in better.metrics:
        assert (m.wins, m.ties, m.losses) == (30, 0, 0), m
        assert m.b > m.a
    for m in worse.metrics:
        assert (m.wins, m.losses) == (0, 30) and m.ci_high < 0, m
    table = comparison_table([better])
    assert all(line.endswith("30/0/0  *") for line in table[2:-1])
    assert table[-1] == "* the 95% interval of B-A excludes 0"
    # the command prints the same comparison, and as JSON for scripts
    shown = cli("compare", "--run", "r1", "--methods", "baseline,reference", "--bootstrap",
                "500", *world.db_option)  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines() == table
    as_json = cli("compare", "--run", "r1", "--methods", "baseline,reference", "--bootstrap",
                  "500", "--format", "json", *world.db_option)  # fmt: skip
    assert json.loads(as_json.output) == [better.as_dict()]
    few = cli("compare", "--run", "r1", "--bootstrap", "10", *world.db_option)
    assert few.exit_code == 2 and "--bootstrap" in few.output


def test_corpus_bleu_pools_the_shared_images_counts_and_a_seed_fixes_the_interval(
    world: World, cli: Any
) -> None:
    build(world, cli, "r1", "--method", "all")
    with open_store(world) as store:
        comparisons = compare_run(store, "r1")
        first = comparisons[0]
        a = stored_scores(store, "r1", "baseline")
        b = stored_scores(store, "r1", "scratchpad")
        again = compare_sides(store, ("r1", "baseline"), ("r1", "scratchpad"))
        other_seed = compare_sides(store, ("r1", "baseline"), ("r1", "scratchpad"), seed=1)
    # no --methods: the run's first method against each other one, in run order
    assert [(c.a, c.b) for c in comparisons] == [
        ("r1/baseline", "r1/scratchpad"),
        ("r1/baseline", "r1/llava_cot"),
        ("r1/baseline", "r1/scratchpad_compare"),
    ]
    shared = sorted(set(a) & set(b))
    for side, scores in (("a", a), ("b", b)):
        comps = [scores[i].scoring["bleu"] for i in shared]  # type: ignore[index]
        pooled = pooled_bleu(comps)
        for n, key in enumerate(("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")):
            got = getattr(next(m for m in first.metrics if m.metric == key), side)
            assert got == pooled[n]
            # corpus BLEU is not the mean of per-image BLEU
            assert not math.isclose(got, mean([scores[i].metrics[key] for i in shared]))
        cider = next(m for m in first.metrics if m.metric == "CIDEr")
        assert getattr(cider, side) == mean([scores[i].metrics["CIDEr"] for i in shared])
    # the interval, by hand: each resample's corpus BLEU pooled again from its images' counts
    draws = np.random.default_rng(0).integers(0, len(shared), size=(1000, len(shared)))
    bleu4 = [
        pooled_bleu([b[shared[k]].scoring["bleu"] for k in draw])[3]  # type: ignore[index]
        - pooled_bleu([a[shared[k]].scoring["bleu"] for k in draw])[3]  # type: ignore[index]
        for draw in draws
    ]
    by_hand = np.percentile(bleu4, [2.5, 97.5]).tolist()
    assert [first.metrics[3].ci_low, first.metrics[3].ci_high] == by_hand
    cider = [
        np.mean([b[shared[k]].metrics["CIDEr"] - a[shared[k]].metrics["CIDEr"] for k in draw])
        for draw in draws
    ]
    assert [first.metrics[-1].ci_low, first.metrics[-1].ci_high] == pytest.approx(
        np.percentile(cider, [2.5, 97.5]).tolist(), abs=1e-12
    )
    intervals = [[(m.ci_low, m.ci_high) for m in c.metrics] for c in (first, again, other_seed)]
    assert intervals[0] == intervals[1]
    assert intervals[0] != intervals[2]
    assert [m.diff for m in first.metrics] == [m.diff for m in other_seed.metrics]
    # JSON-ready, every field kept
    payload = json.loads(json.dumps([c.as_dict() for c in comparisons]))
    assert payload[0]["a"] == "r1/baseline" and payload[0]["bootstrap"] == 1000
    assert payload[0]["metrics"][3] == {
        **{k: getattr(first.metrics[3], k) for k in (
            "metric", "level", "n", "a", "b", "diff", "ci_low", "ci_high", "wins", "ties",
            "losses")},
        "excludes_zero": first.metrics[3].excludes_zero,
    }  # fmt: skip


def case(call: Any, message: str, name: str) -> Any:
    return pytest.param(call, message, id=name)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        case(lambda s: compare_run(s, "nope"), r"no run 'nope' in .* \(see `runs`\)", "run"),
        case(lambda s: compare_run(s, "one", against="nope"), r"no run 'nope'", "against"),
        case(
            lambda s: compare_sides(s, ("one", "baseline"), ("one", "scratchpad")),
            r"run one has no method 'scratchpad' \(it has baseline\)",
            "method",
        ),
        case(
            lambda s: compare_run(s, "one", methods=["baseline", "cot"]),
            r"run one has no method 'cot' \(it has baseline\)",
            "listed-method",
        ),
        case(
            lambda s: compare_run(s, "one"),
            r"^run one has only one method \(baseline\): name two with --methods A,B, "
            r"or compare it with the same method of another run with --against RUN2$",
            "one-method",
        ),
        case(
            lambda s: compare_run(s, "one", methods=["baseline"]),
            r"^--methods names only one method \(baseline\)",
            "one-listed",
        ),
        case(
            lambda s: compare_run(s, "one", bootstrap=99),
            r"--bootstrap must be at least 100 resamples \(got 99\)",
            "few-resamples",
        ),
    ],
)
def test_mistakes_get_one_clear_message(world: World, cli: Any, call: Any, message: str) -> None:
    one = cli(*world.run_args("--method", "baseline", "--num_samples", "3", "--run_id", "one"))
    assert one.exit_code == 0, one.output
    with open_store(world) as store, pytest.raises(CobraEvalError, match=message):
        call(store)


def score(metrics: dict[str, float], bleu: dict[str, Any] | None = None) -> StoredScore:
    return StoredScore(metrics, {"bleu": bleu} if bleu else None)


def test_without_counts_bleu_falls_back_to_the_mean_and_missing_scores_are_left_out() -> None:
    rng = np.random.default_rng(3)
    comps = random_comps(rng, 12)
    values = rng.random((12, 2, 7))

    def side(k: int, bleu: bool) -> dict[int, StoredScore]:
        return {
            i: score(dict(zip(METRIC_KEYS, values[i, k].tolist(), strict=True)),
                     comps[i] if bleu else None)
            for i in range(12)
        }  # fmt: skip

    a, b = side(0, True), side(1, True)
    b[4] = score({**b[4].metrics, "CIDEr": math.nan}, comps[4])  # not scored on one side
    del b[5].metrics["ROUGE_L"]
    b[11] = score(b[11].metrics)  # imported: no BLEU counts
    b[12] = a[12] = score({"CIDEr": 1.0})
    a[13] = score({"CIDEr": 1.0})
    c = compare_scores(a, b, a_label="x", b_label="y", bootstrap=200)
    assert (c.shared, c.only_a, c.only_b) == (13, 1, 0)
    m = {x.metric: x for x in c.metrics}
    assert [(k, x.level, x.n) for k, x in m.items()] == [
        ("Bleu_1", "sample_mean", 12), ("Bleu_2", "sample_mean", 12),
        ("Bleu_3", "sample_mean", 12), ("Bleu_4", "sample_mean", 12),
        ("METEOR", "sample_mean", 12), ("ROUGE_L", "corpus", 11), ("CIDEr", "corpus", 12),
    ]  # fmt: skip
    assert m["Bleu_2"].a == mean(values[:, 0, 1].tolist())
    assert m["CIDEr"].b == mean([*np.delete(values[:, 1, 6], 4).tolist(), 1.0])
    assert m["CIDEr"].wins + m["CIDEr"].ties + m["CIDEr"].losses == 12
    assert m["CIDEr"].ties >= 1  # image 12 scored 1.0 on both sides
    # with the counts on every sample, BLEU is the corpus score again
    b[11] = score(b[11].metrics, comps[11])
    bleu = compare_scores(a, b, bootstrap=200).metrics[0]
    assert (bleu.level, bleu.a) == ("corpus", pooled_bleu(comps)[0])
    with pytest.raises(CobraEvalError, match=r"A and B have no successful results on the same"):
        compare_scores({1: a[1]}, {2: b[2]})
