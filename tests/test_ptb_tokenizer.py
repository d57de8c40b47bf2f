"""The long-lived PTB tokenizer JVM prints exactly what one JVM per call prints.

Every test runs the real Stanford CoreNLP 3.4.1 jar that pycocoevalcap ships; the
one-JVM-per-call path (pycocoevalcap's own way) is the reference.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cobra_eval.metrics import ptb
from cobra_eval.metrics.corpus import (
    TOKENIZER_TIMEOUT_S,
    ptb_tokenize,
    pycocoevalcap_dir,
    real_coco_captions,
    sanitize,
)
from tests.conftest import REPO

JAR = pycocoevalcap_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"

EDGE_CASES = [
    "A man riding a horse on the beach.",
    "Café crème, naïve façade; Ångström & Øresund — São Paulo.",
    "日本の猫が寝ている。 一只猫在桌子上 고양이가 있다",
    "A dog 🐕 with a 🎾 ball 👨‍👩‍👧 family 🏳️‍🌈 flag",
    "كلب يجري في الحديقة and שלום עולם mixed RTL",
    "e\u0301 combining accent, zero\u200bwidth, soft\u00adhyphen, bom\ufeffinside",
    "\ufeffA caption starting with a byte order mark",
    "He said \"hello\" and 'bye' and ``latex'' quotes",
    "“Curly” quotes, ‘single’ ones, «guillemets» and „low“ ones",
    "Brackets (round) [square] {curly} <angle> and -LRB- tokens",
    "Ellipses... and … unicode ones.... and . . . spaced",
    "two ||| cats",
    "|||",
    "...",
    "!!! ??? ;;; ::: ,,, --- '' `` ' `",
    "-",
    "?",
    "It's the dog's bone, can't won't gonna y'all 'til '90s",
    "Mr. Smith and Dr. Jones of the U.S.A. etc. Inc. vs. e.g. i.e.",
    "3.14 1,000,000 $5.00 50% 10:30 a.m. 2014-09-02 1/2 +44 (0) 20",
    "http://example.com/a?b=c&d=e user@example.com #hashtag @user",
    "&amp; &lt;b&gt; <b>bold</b> <br/> AT&T Q&A",
    "ALL CAPS CAPTION WITH İSTANBUL AND ΣΊΣΥΦΟΣ",
    "control \x01 chars \x7f and \x1b[0m escapes",
    "tabs\tand  double  spaces\u00a0nbsp\u3000ideographic",
    "a",
    "word " * 3000 + "end.",
    "x" * 5000,
]


@pytest.fixture(autouse=True)
def fresh_servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(ptb.SERVER_ENV, raising=False)
    ptb.shutdown()
    yield
    ptb.shutdown()


def per_call(lines: list[str]) -> str:
    return ptb.tokenize_per_call("\n".join(lines).encode("utf-8"), JAR, TOKENIZER_TIMEOUT_S)


def served(lines: list[str], timeout_s: float = TOKENIZER_TIMEOUT_S) -> str:
    out = ptb.tokenize_text("\n".join(lines), JAR, timeout_s)
    assert ptb.server_pid(JAR) is not None, "the request did not go through the server"
    return out


def coco_lines(n: int | None = None) -> list[str]:
    lines = [sanitize(c) for caps in real_coco_captions("val2014").values() for c in caps]
    return [line for line in lines if line][:n]


@pytest.fixture(scope="module")
def batches() -> list[tuple[list[str], str]]:
    """Distinct requests, each with the per-call tokenizer's output for it."""
    coco = coco_lines(400)
    requests = [EDGE_CASES[k : k + 5] for k in range(0, len(EDGE_CASES), 5)]
    requests += [coco[k : k + 16] for k in range(0, 64, 16)] + [coco, [coco[0]]]
    return [(lines, per_call(lines)) for lines in requests]


def test_edge_cases_equal_the_per_call_output() -> None:
    expected = per_call(EDGE_CASES)
    assert served(EDGE_CASES) == expected
    assert len(expected.rstrip("\n").split("\n")) == len(EDGE_CASES)
    # each line alone too: the output does not depend on the lines around it
    lines = expected.rstrip("\n").split("\n")
    for line, want in zip(EDGE_CASES, lines, strict=True):
        assert served([line]).rstrip("\n") == want, line[:80]


def test_ptb_tokenize_is_the_same_through_either_path(monkeypatch: pytest.MonkeyPatch) -> None:
    captions = {
        "edge": EDGE_CASES,
        "blank": ["", "   ", "\n", "\r\n\u2028"],
        "mixed": ["", "A cat.", "", "...", "A\nbroken\rline"],
    }
    fast = ptb_tokenize(captions)
    assert ptb.server_pid(JAR) is not None
    ptb.shutdown()
    monkeypatch.setenv(ptb.SERVER_ENV, "0")
    assert ptb_tokenize(captions) == fast
    assert ptb.server_pid(JAR) is None, "COBRA_EVAL_PTB_SERVER=0 must not start a server"
    assert fast["blank"] == ["", "", "", ""]
    assert fast["mixed"] == ["", "a cat", "", "", "a broken line"]


def test_many_requests_in_a_row(batches: list[tuple[list[str], str]]) -> None:
    pids = set()
    for k in range(200):
        lines, want = batches[k % len(batches)]
        assert served(lines) == want
        pids.add(ptb.server_pid(JAR))
    assert len(pids) == 1, "one server answers every request"


def test_concurrent_calls_from_threads(batches: list[tuple[list[str], str]]) -> None:
    failures: list[str] = []

    def worker(offset: int) -> None:
        for k in range(40):
            lines, want = batches[(offset + k) % len(batches)]
            if ptb.tokenize_text("\n".join(lines), JAR, TOKENIZER_TIMEOUT_S) != want:
                failures.append(f"thread {offset}, request {k}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_a_killed_server_is_restarted(batches: list[tuple[list[str], str]]) -> None:
    lines, want = batches[0]
    assert served(lines) == want
    first = ptb.server_pid(JAR)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert ptb.tokenize_text("\n".join(lines), JAR, TOKENIZER_TIMEOUT_S) == want
    assert served(lines) == want
    assert ptb.server_pid(JAR) not in (None, first)


def test_a_server_killed_mid_request_still_answers_right(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines = coco_lines()
    want = per_call(lines)
    served(["warm up"])
    pid = ptb.server_pid(JAR)
    assert pid is not None
    # the 200k-line request takes a second or more in the server: kill it while it works
    killer = threading.Timer(0.3, os.kill, (pid, signal.SIGKILL))
    killer.start()
    try:
        with caplog.at_level(logging.WARNING, logger=ptb.__name__):
            got = ptb.tokenize_text("\n".join(lines), JAR, TOKENIZER_TIMEOUT_S)
    finally:
        killer.join()
    assert got == want
    assert "the PTB tokenizer server stopped: killed by signal 9" in caplog.text
    assert served(["A cat."]) == per_call(["A cat."])
    assert ptb.server_pid(JAR) != pid


def test_a_reply_past_the_deadline_kills_the_server(batches: list[tuple[list[str], str]]) -> None:
    served(["warm up"])
    pid = ptb.server_pid(JAR)
    with pytest.raises(subprocess.TimeoutExpired):
        ptb.tokenize_text("\n".join(coco_lines()), JAR, 0.05)
    assert ptb.server_pid(JAR) is None
    lines, want = batches[1]
    assert served(lines) == want
    assert ptb.server_pid(JAR) != pid


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_the_servers_memory_stays_small_over_a_long_runs_requests(
    batches: list[tuple[list[str], str]],
) -> None:
    # a 100k-image plan's references go in chunks of 20,000 lines, then a run's batches
    chunk = coco_lines(20_000)
    want = per_call(chunk)
    for _ in range(3):
        assert served(chunk) == want
    for lines, expected in batches * 20:
        assert served(lines) == expected
    pid = ptb.server_pid(JAR)
    status = Path(f"/proc/{pid}/status").read_text()
    peak_mib = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM")).split()[1])
    peak_mib //= 1024
    # with the JVM's default heap (a quarter of the machine's memory) this passes 300 MiB
    assert peak_mib < 200, f"the tokenizer JVM peaked at {peak_mib} MiB"


def test_a_request_too_large_for_the_servers_heap_goes_through_one_jvm(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    small = tuple("-Xmx12m" if o.startswith("-Xmx") else o for o in ptb.SERVER_JVM_OPTIONS)
    monkeypatch.setattr(ptb, "SERVER_JVM_OPTIONS", small)
    served(["warm up"])
    pid = ptb.server_pid(JAR)
    lines = [line + " and " + line for line in coco_lines(40_000)]
    with caplog.at_level(logging.WARNING, logger=ptb.__name__):
        got = ptb.tokenize_text("\n".join(lines), JAR, TOKENIZER_TIMEOUT_S)
    assert got == per_call(lines)
    assert "OutOfMemoryError" in caplog.text
    assert "tokenizing this request with one JVM instead" in caplog.text
    # the server survived its failed request and serves the next one
    assert served(["A cat."]) == per_call(["A cat."])
    assert ptb.server_pid(JAR) == pid


def test_without_javac_it_tokenizes_with_one_jvm_per_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    java = subprocess.run(
        ["java", "-XshowSettings:properties", "-version"], capture_output=True, text=True
    ).stderr
    home = next(ln.split("=", 1)[1].strip() for ln in java.splitlines() if "java.home =" in ln)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(Path(home) / "bin" / "java")
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("COBRA_EVAL_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger=ptb.__name__):
        got = ptb.tokenize_text("\n".join(EDGE_CASES), JAR, TOKENIZER_TIMEOUT_S)
    assert got == per_call(EDGE_CASES)
    assert ptb.server_pid(JAR) is None
    assert "javac is not installed" in caplog.text
    assert "one JVM per call" in caplog.text


def test_a_failed_compile_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "PtbServer.java"
    broken.write_text("public final class PtbServer { not java }\n")
    monkeypatch.setattr(ptb, "SERVER_SOURCE", broken)
    monkeypatch.setenv("COBRA_EVAL_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger=ptb.__name__):
        assert ptb_tokenize({1: ["A cat, sleeping."]}) == {1: ["a cat sleeping"]}
    assert ptb.server_pid(JAR) is None
    assert "javac failed on" in caplog.text
    assert not list((tmp_path / "cache" / "ptb-server").iterdir()), "no half-built folder left"


def test_a_server_that_cannot_start_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # a class folder without the class: the JVM starts and exits at once
    monkeypatch.setattr(ptb, "compiled_server", lambda jar: tmp_path)
    with caplog.at_level(logging.WARNING, logger=ptb.__name__):
        assert ptb_tokenize({1: ["A cat, sleeping."]}) == {1: ["a cat sleeping"]}
        assert ptb_tokenize({1: ["Two dogs."]}) == {1: ["two dogs"]}
    assert "did not start" in caplog.text
    assert "PtbServer" in caplog.text  # the JVM's own complaint, from its stderr
    assert caplog.text.count("did not start") == 1, "a start that failed is not retried"


def test_concurrent_compiles_leave_one_complete_build(tmp_path: Path) -> None:
    env = {**os.environ, "COBRA_EVAL_CACHE": str(tmp_path)}
    code = (
        "from cobra_eval.metrics import ptb, corpus;"
        "print(ptb.compiled_server(corpus.pycocoevalcap_dir() / 'tokenizer' / "
        "'stanford-corenlp-3.4.1.jar'))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
        )
        for _ in range(3)
    ]
    outs = {proc.communicate(timeout=300)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    (folder,) = outs
    assert [p.name for p in (tmp_path / "ptb-server").iterdir()] == [Path(folder).name]
    assert (Path(folder) / "PtbServer.class").is_file()


def test_a_forked_child_starts_its_own_server(batches: list[tuple[list[str], str]]) -> None:
    lines, want = batches[2]
    assert served(lines) == want
    parent_pid = ptb.server_pid(JAR)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            ok = ptb.tokenize_text("\n".join(lines), JAR, 60) == want
            mine = ptb.server_pid(JAR)
            code = 0 if ok and mine not in (None, parent_pid) else 2
        finally:
            os.write(write_end, str(code).encode())
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(child, 0)
    report = os.read(read_end, 10)
    os.close(read_end)
    assert report == b"0" and os.waitstatus_to_exitcode(status) == 0
    # the parent's server was neither used nor harmed by the child
    assert ptb.server_pid(JAR) == parent_pid
    assert served(lines) == want


def test_nothing_starts_at_import_and_the_server_dies_at_exit() -> None:
    code = (
        "from cobra_eval.metrics import ptb, corpus;"
        "assert not ptb._servers;"
        "print(corpus.ptb_tokenize({1: ['A cat.']})[1][0]);"
        "print(ptb.server_pid(corpus.pycocoevalcap_dir() / 'tokenizer' / "
        "'stanford-corenlp-3.4.1.jar'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    word, pid = done.stdout.splitlines()
    assert word == "a cat"
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "the JVM outlived its Python process"


def test_batches_of_16_all_go_through_the_one_warm_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # what this costs is metric_cost's business (benchmarks/); here: no batch falls back to a
    # JVM of its own (that fallback logs a warning) and the server is the same throughout
    lines = coco_lines(16 * 50)
    served(lines[:16])
    pid = ptb.server_pid(JAR)
    with caplog.at_level(logging.WARNING, logger=ptb.__name__):
        got = [
            ptb_tokenize({n: [line] for n, line in enumerate(lines[k : k + 16])})
            for k in range(0, len(lines), 16)
        ]
    assert caplog.records == []
    assert ptb.server_pid(JAR) == pid is not None
    # (that its output is the per-call JVM's, line for line, is tested above)
    assert all(len(batch) == 16 and all(t != [""] for t in batch.values()) for batch in got)


@pytest.mark.slow
def test_every_real_coco_caption_tokenizes_identically() -> None:
    lines = [
        sanitize(c)
        for split in ("val2014", "train2014")
        for caps in real_coco_captions(split).values()
        for c in caps
    ]
    lines = [line for line in lines if line]
    assert len(lines) > 600_000
    want = per_call(lines).rstrip("\n").split("\n")
    got: list[str] = []
    for k in range(0, len(lines), 20_000):
        got += served(lines[k : k + 20_000]).rstrip("\n").split("\n")
    assert len(got) == len(want) == len(lines)
    diffs = [k for k, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
    assert not diffs, f"{len(diffs)} lines differ, first: {lines[diffs[0]]!r}"


@pytest.mark.slow
def test_the_wheel_ships_the_server_source(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("cobra_eval-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cobra_eval/metrics/ptb_server/PtbServer.java" in names
    assert "cobra_eval/metrics/ptb.py" in names
