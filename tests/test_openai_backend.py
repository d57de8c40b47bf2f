"""Evaluating a model behind an OpenAI-compatible server, against a real HTTP server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result

from cobra_eval.backends import BackendOptions, GenerationRequest, openai_compat
from tests.conftest import World
from tests.openai_server import ChatServer, Step, digest, serve

MODEL = "served-model"
SECRET = "sk-test-SECRET-123"
#: unset for every run, so a developer's own OPENAI_* settings never reach a test
CLEAN_ENV: dict[str, str | None] = {"OPENAI_API_KEY": None, "OPENAI_BASE_URL": None}


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff of 10 ms instead of 0.5 s: the retry logic is the same, the tests fast."""
    monkeypatch.setattr(openai_compat, "RETRY_BACKOFF_S", 0.01)


@pytest.fixture
def server(world: World) -> Iterator[ChatServer]:
    """A server serving MODEL that knows the world's images and expects max_tokens 16."""
    with serve(model=MODEL, images_dir=world.dataset.parent, max_tokens=16) as running:
        yield running
        # every request the backend sent had the right shape (a test expecting 400s clears this)
        assert running.bad_requests == []


def openai(cli, world: World, server: ChatServer, *extra: str, **env: str | None) -> Result:
    """The run command with --backend openai against the server; extra flags override."""
    args = world.run_args(
        "--backend", "openai", "--api_base", server.url, "--model", MODEL,
        "--max_new_tokens", "16", "--max_retries", "2", "--request_timeout", "5", *extra,
    )  # fmt: skip
    return cli(*args, env={**CLEAN_ENV, **env})


def image(world: World, image_id: int) -> Path:
    return world.dataset.parent / f"img_{image_id:06d}.png"


def ids(n: int) -> list[int]:
    return [1000 + 7 * k for k in range(n)]


def statuses(world: World) -> dict[int, str]:
    return dict(world.rows("SELECT image_id, status FROM sample_result"))


def test_four_requests_in_flight_give_the_captions_of_one(
    world: World, cli, server: ChatServer
) -> None:
    serial = openai(
        cli, world, server, "--num_samples", "12", "--concurrency", "1", "--run_id", "serial"
    )
    assert serial.exit_code == 0, serial.output
    assert (len(server.seen), server.max_in_flight) == (12, 1)
    server.clear()
    parallel = openai(
        cli, world, server, "--num_samples", "12", "--concurrency", "4", "--run_id", "parallel",
        "--no_cache",
    )  # fmt: skip
    assert parallel.exit_code == 0, parallel.output
    assert (len(server.seen), server.max_in_flight) == (12, 4)

    rows = world.rows("SELECT run_id, image_id, status, generated_caption FROM sample_result")
    by_run: dict[str, dict[int, str]] = {"serial": {}, "parallel": {}}
    for run_id, image_id, status, caption in rows:
        assert status == "ok"
        assert image_id not in by_run[run_id]  # one row per sample per run
        by_run[run_id][image_id] = caption
    assert sorted(by_run["serial"]) == ids(12)
    assert by_run["parallel"] == by_run["serial"]
    # the stored caption is the server's answer about that very image
    for image_id, caption in by_run["serial"].items():
        assert caption == server.answers[digest(image(world, image_id))]


def test_a_429_is_retried_after_the_servers_retry_after(
    world: World, cli, server: ChatServer
) -> None:
    victim = image(world, 1007)
    server.script(Step(429, retry_after="0.4"), image=victim)
    result = openai(cli, world, server, "--num_samples", "4")
    assert result.exit_code == 0, result.output
    assert statuses(world) == dict.fromkeys(ids(4), "ok")
    first, second = server.requests_about(victim)
    assert (first.status, second.status) == (429, 200)
    # the backoff is 10 ms here: only the header explains a 0.4 s pause
    assert second.at - first.at >= 0.4
    assert len(server.seen) == 5


def test_a_short_burst_of_500s_is_absorbed_by_retries(
    world: World, cli, server: ChatServer
) -> None:
    server.script(Step(500), Step(500), Step(500))
    result = openai(cli, world, server, "--num_samples", "8", "--max_retries", "3")
    assert result.exit_code == 0, result.output
    assert "failed" not in result.output
    assert statuses(world) == dict.fromkeys(ids(8), "ok")
    assert [s.status for s in server.seen].count(500) == 3
    assert len(server.seen) == 8 + 3
    assert server.unused_steps() == 0


def test_a_sample_whose_retries_run_out_fails_alone_and_resume_completes_it(
    world: World, cli, server: ChatServer
) -> None:
    victim = image(world, 1014)
    server.script(Step(500), Step(500), Step(500), image=victim)
    result = openai(cli, world, server, "--num_samples", "6")
    assert result.exit_code == 0, result.output
    assert "Done: baseline 6/6 samples, 1 failed (retried on resume)" in result.output
    assert statuses(world) == {**dict.fromkeys(ids(6), "ok"), 1014: "failed"}
    ((error,),) = world.rows("SELECT error FROM sample_result WHERE image_id = 1014")
    assert error.startswith("RequestFailedError: POST http://127.0.0.1:")
    assert "HTTP 500: scripted fault 500 (gave up after 3 attempts)" in error
    assert [s.status for s in server.requests_about(victim)] == [500, 500, 500]

    # the fault is gone, and the server has even moved to another port: the same run resumes
    with serve(model=MODEL, images_dir=world.dataset.parent, max_tokens=16) as moved:
        again = openai(cli, world, moved, "--num_samples", "6", "--resume_from_checkpoint")
        assert again.exit_code == 0, again.output
        assert "Loaded checkpoint: 6 samples processed" in again.output
        assert [s.image for s in moved.seen] == [digest(victim)]
        assert world.rows("SELECT COUNT(DISTINCT run_id) FROM sample_result") == [(1,)]
        assert statuses(world) == dict.fromkeys(ids(6), "ok")
        ((caption,),) = world.rows(
            "SELECT generated_caption FROM sample_result WHERE image_id = 1014"
        )
        assert caption == moved.answers[digest(victim)]


def test_a_caption_with_a_lone_surrogate_is_stored_scored_and_exported(
    world: World, cli, server: ChatServer
) -> None:
    # JSON may escape half a UTF-16 pair ("\\ud83d"): Python decodes it to a str that no
    # UTF-8 writer (the database, the tokenizer, the JSON files) accepts
    server.script(Step(content="a red \ud83d circle"), image=image(world, 1007))
    result = openai(cli, world, server, "--num_samples", "3", "--metrics", "bleu,rouge")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert statuses(world) == dict.fromkeys(ids(3), "ok")
    ((caption, metrics),) = world.rows(
        "SELECT generated_caption, metrics FROM sample_result WHERE image_id = 1007"
    )
    assert caption == "a red \ufffd circle"
    assert "ROUGE_L" in metrics
    (final,) = world.out.glob("*/baseline/results_baseline.json")
    stored = {r["image_id"]: r for r in json.loads(final.read_text(encoding="utf-8"))["results"]}
    assert stored[1007]["generated_caption"] == "a red \ufffd circle"


def test_a_request_that_times_out_is_retried(world: World, cli, server: ChatServer) -> None:
    victim = image(world, 1007)
    server.script(Step(sleep=1.0), image=victim)
    result = openai(cli, world, server, "--num_samples", "3", "--request_timeout", "0.3")
    assert result.exit_code == 0, result.output
    assert statuses(world) == dict.fromkeys(ids(3), "ok")
    first, second = server.requests_about(victim)
    assert 0.3 <= second.at - first.at < 1.0


def test_a_request_that_always_times_out_fails_its_sample(
    world: World, cli, server: ChatServer
) -> None:
    victim = image(world, 1007)
    server.script(*[Step(sleep=1.0)] * 3, image=victim)
    result = openai(cli, world, server, "--num_samples", "3", "--request_timeout", "0.3")
    assert result.exit_code == 0, result.output
    assert "Done: baseline 3/3 samples, 1 failed (retried on resume)" in result.output
    assert statuses(world) == {1000: "ok", 1007: "failed", 1014: "ok"}
    ((error,),) = world.rows("SELECT error FROM sample_result WHERE image_id = 1007")
    assert "no answer within 0.3 s (ReadTimeout) (gave up after 3 attempts)" in error
    assert len(server.requests_about(victim)) == 3


def test_a_request_the_server_rejects_fails_at_once_without_retries(
    world: World, cli, server: ChatServer
) -> None:
    result = openai(cli, world, server, "--num_samples", "3", "--max_new_tokens", "17")
    assert result.exit_code == 0, result.output
    assert "3 failed (retried on resume)" in result.output
    errors = [e for (e,) in world.rows("SELECT error FROM sample_result")]
    assert len(errors) == 3
    assert all(e.endswith("HTTP 400: max_tokens 17 != 16") for e in errors), errors
    assert len(server.seen) == 3
    server.bad_requests.clear()


def test_an_unreadable_image_fails_its_sample_without_a_request(
    world: World, cli, server: ChatServer
) -> None:
    victim = image(world, 1007)
    victim.write_bytes(b"not a picture")
    result = openai(cli, world, server, "--num_samples", "3")
    assert result.exit_code == 0, result.output
    assert statuses(world) == {1000: "ok", 1007: "failed", 1014: "ok"}
    ((error,),) = world.rows("SELECT error FROM sample_result WHERE image_id = 1007")
    assert error == f"ImageError: {victim}: not an image file Pillow can read"
    assert len(server.seen) == 2


def test_ctrl_c_while_the_server_is_slow_stops_at_once(world: World, server: ChatServer) -> None:
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO, as_foreground, subprocess_env

    server.script(*[Step(sleep=60)] * 8)
    args = world.run_args(
        "--backend", "openai", "--api_base", server.url, "--model", MODEL,
        "--max_new_tokens", "16", "--num_samples", "8", "--request_timeout", "60",
    )  # fmt: skip
    env = {k: v for k, v in subprocess_env().items() if k not in CLEAN_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cobra_eval", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
        preexec_fn=as_foreground,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while server.in_flight < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert server.in_flight == 4
    interrupted = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    # not the 60 s the slow requests would take: nothing waits for their answers
    assert time.monotonic() - interrupted < 5
    assert proc.returncode == 130
    assert "Interrupted:" in err and "Traceback" not in err
    assert world.rows("SELECT COUNT(*) FROM sample_result") == [(0,)]


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ([], {}, "no API key was sent ($OPENAI_API_KEY is not set)"),
        ([], {"OPENAI_API_KEY": "sk-test-WRONG-456"}, "the API key read from $OPENAI_API_KEY"),
        (
            ["--api_key_env", "TEAM_KEY"],
            {"TEAM_KEY": "sk-test-WRONG-456", "OPENAI_API_KEY": SECRET},
            "the API key read from $TEAM_KEY was refused",
        ),
    ],
)
def test_a_refused_key_stops_the_run_with_one_clear_message(
    world: World, cli, flags: list[str], env: dict[str, str], message: str
) -> None:
    with serve(model=MODEL, api_key=SECRET) as server:
        result = openai(cli, world, server, "--num_samples", "8", *flags, **env)
    assert result.exit_code == 1
    *before, line = result.output.strip().splitlines()
    assert before == [before[0]] and before[0].startswith("Starting generation at")
    assert line.startswith(f"Error: the server at {server.url}/chat/completions answered HTTP 401")
    assert message in line
    assert "Traceback" not in result.output
    assert "sk-test" not in result.output
    assert not world.db.exists() or world.rows(
        "SELECT COUNT(*) FROM sample_result WHERE status = 'ok'"
    ) == [(0,)]
    # the first wave of requests was refused; the queued ones were never sent
    assert 1 <= len(server.seen) <= 4


@pytest.mark.parametrize(
    ("model", "path", "expected"),
    [
        ("other-model", "/v1", "for model 'other-model' (server said: The model `other-model` "),
        (MODEL, "", "for model 'served-model' (server said: no route /chat/completions)"),
    ],
)
def test_an_unknown_model_or_url_stops_the_run_naming_both(
    world: World, cli, server: ChatServer, model: str, path: str, expected: str
) -> None:
    base = server.url.removesuffix("/v1") + path
    result = openai(cli, world, server, "--num_samples", "4", "--api_base", base, "--model", model)
    assert result.exit_code == 1
    assert f"HTTP 404 to POST {base}/chat/completions {expected}" in result.output
    assert "check that --api_base ends in /v1" in result.output
    assert "Traceback" not in result.output
    assert len(server.seen) <= 4


def test_the_api_key_is_sent_but_never_stored_or_printed(
    world: World, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = image(world, 1007)
    with serve(model=MODEL, api_key=SECRET, images_dir=world.dataset.parent) as server:
        # a server (or proxy) whose error quotes the request headers, key and all
        server.script(*[Step(500, echo_headers=True)] * 3, image=victim)
        result = openai(cli, world, server, "--num_samples", "4", OPENAI_API_KEY=SECRET)
        assert result.exit_code == 0, result.output
        assert {s.authorization for s in server.seen} == {f"Bearer {SECRET}"}
        run_id = world.only_run_id()
        listed = cli("runs", "--output_dir", str(world.out), "--format", "json")
        exported = cli("export", run_id, "--output_dir", str(world.out))
    assert statuses(world) == {1000: "ok", 1007: "failed", 1014: "ok", 1021: "ok"}
    ((error,),) = world.rows("SELECT error FROM sample_result WHERE image_id = 1007")
    assert '"authorization": "Bearer ***"' in error

    printed = result.output + listed.output + exported.output
    assert listed.exit_code == 0 and exported.exit_code == 0, printed
    assert SECRET not in printed
    stored = [p for p in world.out.rglob("*") if p.is_file()]
    assert world.db in stored and any(p.suffix == ".json" for p in stored)
    for path in stored:  # the database (and its journal files) and every JSON file
        assert SECRET.encode() not in path.read_bytes(), path

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    backend = openai_compat.OpenAIBackend(
        BackendOptions(model=MODEL, extra={"api_base": "http://127.0.0.1:1/v1"})
    )
    assert SECRET not in repr(backend) and SECRET not in str(backend.identity())
    assert backend.identity() == {"name": MODEL}


def test_a_server_that_is_not_running_stops_the_run_at_once(world: World, cli) -> None:
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = cli(
        *world.run_args("--backend", "openai", "--api_base", f"http://127.0.0.1:{port}/v1",
                        "--model", MODEL, "--max_retries", "1", "--num_samples", "5"),
        env=CLEAN_ENV,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "cannot reach the server: POST http://127.0.0.1:" in result.output
    assert "is it running, and is --api_base right?" in result.output
    assert "Traceback" not in result.output
    # the run stopped on the first batch: no sample was stored as failed one by one
    assert world.rows("SELECT COUNT(*) FROM sample_result") == [(0,)]
    # and it is not left 'running'
    assert world.rows("SELECT status FROM run") == [("interrupted",)]
    assert world.rows("SELECT status FROM run_method") == [("interrupted",)]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--model", MODEL],
            "Error: --backend openai needs the server's OpenAI-compatible base URL: pass "
            "--api_base URL (or set OPENAI_BASE_URL), e.g. --api_base http://localhost:8000/v1",
        ),
        (
            ["--api_base", "http://localhost:8000/v1"],
            "Error: --backend openai needs --model NAME: the model's name as the server knows it",
        ),
        (
            ["--api_base", "localhost:8000/v1", "--model", MODEL],
            "Error: --api_base 'localhost:8000/v1' is not an http(s) URL",
        ),
    ],
)
def test_missing_server_settings_give_one_clear_error(
    world: World, cli, flags: list[str], message: str
) -> None:
    result = cli(*world.run_args("--backend", "openai", *flags), env=CLEAN_ENV)
    assert result.exit_code == 1
    assert result.output.startswith(message)
    assert "Traceback" not in result.output
    assert not world.db.exists()


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif"), ("BMP", "image/png")],
)
def test_images_go_as_data_urls_of_their_real_format(tmp_path: Path, fmt: str, mime: str) -> None:
    import base64
    import io

    from PIL import Image

    path = tmp_path / "picture.png"  # the extension lies: the bytes decide
    Image.new("RGB", (4, 4), (200, 30, 90)).save(path, format=fmt)
    url = openai_compat.image_data_url(GenerationRequest(image_path=path, prompt="?"))
    head, _, payload = url.partition(",")
    assert head == f"data:{mime};base64"
    sent = base64.b64decode(payload)
    if fmt == "BMP":  # not every server decodes BMP: it is sent as PNG, same pixels
        with Image.open(io.BytesIO(sent)) as png, Image.open(path) as bmp:
            assert png.format == "PNG" and png.tobytes() == bmp.convert("RGB").tobytes()
    else:
        assert sent == path.read_bytes()
