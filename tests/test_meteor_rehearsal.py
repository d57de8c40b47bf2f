"""METEOR rehearses on a run's references before its first sample, without changing a score."""

from __future__ import annotations

import threading

import pytest

from cobra_eval.metrics.corpus import ptb_tokenize, real_coco_captions
from cobra_eval.metrics.meteor import MeteorProcess

Pairs = list[tuple[str, list[str]]]


@pytest.fixture(scope="module")
def pairs() -> tuple[Pairs, Pairs]:
    """(scored, rehearsed): each image's first caption against its others, as a run sends
    them, for two sets of real COCO images."""
    captions = real_coco_captions()
    ids = sorted(captions)[:200]
    tokenized = ptb_tokenize({i: captions[i] for i in ids})
    both = [(tokenized[i][0], tokenized[i][1:]) for i in ids]
    return both[:100], both[100:]


def references(*sets: Pairs) -> list[str]:
    return [ref for pairs in sets for _, refs in pairs for ref in refs]


def paraphrase_threads() -> None:
    """Wait for every cut-and-start thread (and its rehearsal) to end."""
    for thread in threading.enumerate():
        if thread.name == "meteor-paraphrases":
            thread.join(timeout=120)


@pytest.mark.slow
def test_a_rehearsed_jvm_gives_the_same_statistics_and_scores(
    pairs: tuple[Pairs, Pairs],
) -> None:
    scored, rehearsed = pairs
    with MeteorProcess() as fresh:
        fresh.prepare(lambda: references(scored, rehearsed))
        expected = fresh.stats_many(scored)
        expected_scores = fresh.evaluate(expected)
    called = threading.Event()

    def rehearsal() -> Pairs:
        called.set()
        return rehearsed

    with MeteorProcess() as meteor:
        meteor.prepare(lambda: references(scored, rehearsed), rehearsal)
        paraphrase_threads()
        assert called.is_set()  # once the JVM was up, with nothing asked of it yet
        # and by hand, on the running JVM: every pair, nothing else asked meanwhile
        assert meteor.rehearse(rehearsed) == len(rehearsed)
        assert meteor.stats_many(scored) == expected
        assert meteor.evaluate(expected) == expected_scores


@pytest.mark.slow
def test_a_rehearsal_gives_way_to_the_first_real_request(pairs: tuple[Pairs, Pairs]) -> None:
    scored, rehearsed = pairs
    long_rehearsal = rehearsed * 10  # seconds of the JVM's time: the request comes first
    done: list[int] = []
    with MeteorProcess() as meteor:
        meteor.prepare(lambda: references(scored, rehearsed))
        paraphrase_threads()  # its JVM is up
        thread = threading.Thread(target=lambda: done.append(meteor.rehearse(long_rehearsal)))
        thread.start()
        first = meteor.stats_many(scored[:4])
        thread.join(timeout=120)
        assert done and done[0] < len(long_rehearsal)
    with MeteorProcess() as fresh:
        fresh.prepare(lambda: references(scored, rehearsed))
        assert fresh.stats_many(scored[:4]) == first


def test_a_closed_process_is_not_rehearsed_and_starts_no_jvm(pairs: tuple[Pairs, Pairs]) -> None:
    scored, rehearsed = pairs
    meteor = MeteorProcess()
    meteor.prepare(lambda: references(scored), lambda: rehearsed)
    meteor.close()  # before the cut is made and the JVM started
    paraphrase_threads()
    assert meteor.pid is None
    assert meteor.rehearse(rehearsed) == 0  # no JVM runs: none is started for a rehearsal
    assert meteor.pid is None
