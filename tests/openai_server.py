"""A real OpenAI-compatible chat-completions server on 127.0.0.1, for the openai backend's tests.

It answers ``POST /v1/chat/completions`` as vLLM or OpenAI do, with a caption that
depends only on the prompt and the image bytes (as EchoBackend's does), so any
concurrency gives the same results. It checks every request's shape and answers
400 to a wrong one. Faults are scripted: a queue of answers (a status, a sleep,
a Retry-After, a content) served before normal ones, either to the next requests or to the
requests about one image. It counts requests and the most in flight at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.stand_in import COLORS, RELATIONS, SHAPES

DATA_URL = re.compile(r"^data:image/(png|jpeg|webp|gif);base64,(.+)$", re.S)


@dataclass(frozen=True)
class Step:
    """One scripted answer: sleep, then a status (200: a normal completion)."""

    status: int = 200
    sleep: float = 0.0
    retry_after: str | None = None
    #: an error body that quotes the request's headers, as a careless proxy might
    echo_headers: bool = False
    #: a 200's message content instead of the normal caption
    content: str | None = None


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    at: float  # time.monotonic() on arrival
    image: str  # sha256 of the decoded image bytes, "" when there was none
    status: int
    authorization: str | None


def caption_for(image: bytes, prompt: str) -> str:
    """The server's deterministic answer to a prompt about an image."""
    seed = hashlib.sha256(image + b"\0" + prompt.encode()).digest()
    a, b = COLORS[seed[0] % 6], COLORS[seed[1] % 6]
    s1, s2 = SHAPES[seed[2] % 3], SHAPES[seed[3] % 3]
    caption = f"a {a} {s1} {RELATIONS[seed[4] % 4]} a {b} {s2}"
    if "Caption:" in prompt:
        return f"Objects: {a} {s1}, {b} {s2}.\nCaption: {caption}"
    return caption


def digest(path: Path) -> str:
    """How the server names an image: the sha256 of the file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ChatServer:
    """The server's state: what it serves, what it was told to do, what it saw."""

    def __init__(
        self,
        *,
        model: str = "served-model",
        api_key: str | None = None,
        images_dir: Path | None = None,
        max_tokens: int | None = None,
        delay: float = 0.05,
    ):
        self.model, self.api_key, self.max_tokens, self.delay = model, api_key, max_tokens, delay
        #: sha256 of every image a request may carry (None: any valid image)
        self.known_images = (
            {digest(p) for p in images_dir.iterdir() if p.suffix in (".png", ".jpg", ".jpeg")}
            if images_dir is not None
            else None
        )
        self.seen: list[Seen] = []
        #: why each 400 was given
        self.bad_requests: list[str] = []
        #: image sha256 -> the last caption answered for it
        self.answers: dict[str, str] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._next: deque[Step] = deque()
        self._per_image: dict[str, deque[Step]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._http: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """The base URL to pass as --api_base."""
        assert self._http is not None, "not started"
        return f"http://127.0.0.1:{self._http.server_address[1]}/v1"

    def script(self, *steps: Step, image: Path | None = None) -> None:
        """Serve these answers first: to the requests about `image`, or to the next requests."""
        with self._lock:
            if image is None:
                self._next.extend(steps)
            else:
                self._per_image.setdefault(digest(image), deque()).extend(steps)

    def clear(self) -> None:
        """Forget the scripted faults and what was seen."""
        with self._lock:
            self._next.clear()
            self._per_image.clear()
            self.seen.clear()
            self.bad_requests.clear()
            self.max_in_flight = 0

    def requests_about(self, image: Path) -> list[Seen]:
        """The requests received about one image file."""
        sha = digest(image)
        return [s for s in self.seen if s.image == sha]

    def unused_steps(self) -> int:
        """Scripted answers not served yet."""
        with self._lock:
            return len(self._next) + sum(len(q) for q in self._per_image.values())

    # -- serving ------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on an ephemeral port of 127.0.0.1, in a daemon thread."""
        state = self

        class Handler(_Handler):
            server_state = state

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self._http.block_on_close = False
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop listening; handlers still sleeping wake up and finish."""
        self._stopping.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[Step, Any]:
        """Decide the answer to one request: (the step, the JSON body to send)."""
        arrived = time.monotonic()
        authorization = headers.get("authorization")
        status, body, image = self._check(path, authorization, raw)
        step = Step(status=status)
        if status == 200:
            with self._lock:
                queue = self._per_image.get(image)
                if queue:
                    step = queue.popleft()
                elif self._next:
                    step = self._next.popleft()
            if step.status == 200 and step.content is not None:
                body = _completion(self.model, step.content)
            elif step.status != 200:
                message = f"scripted fault {step.status}"
                if step.echo_headers:
                    # the Authorization header first, where a shortened quote still has it
                    echoed = {"authorization": authorization, **headers}
                    message += f"; request headers: {json.dumps(echoed)}"
                body = _error(message, step.status)
        with self._lock:
            self.seen.append(Seen(arrived, image, step.status, authorization))
            if step.status == 200 and status == 200:
                self.answers[image] = body["choices"][0]["message"]["content"]
        return step, body

    def _check(self, path: str, authorization: str | None, raw: bytes) -> tuple[int, Any, str]:
        if path != "/v1/chat/completions":
            return 404, _error(f"no route {path}", 404), ""
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            return 401, _error("Incorrect API key provided", 401), ""
        try:
            request = json.loads(raw)
        except ValueError:
            return self._bad("the body is not JSON")
        if not isinstance(request, dict):
            return self._bad("the body is not a JSON object")
        if request.get("model") != self.model:
            return 404, _error(f"The model `{request.get('model')}` does not exist.", 404), ""
        problem, image, prompt = _check_shape(request, self.known_images, self.max_tokens)
        if problem:
            return self._bad(problem)
        sha = hashlib.sha256(image).hexdigest()
        return 200, _completion(self.model, caption_for(image, prompt)), sha

    def _bad(self, why: str) -> tuple[int, Any, str]:
        with self._lock:
            self.bad_requests.append(why)
        return 400, _error(why, 400), ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: ChatServer

    def do_POST(self) -> None:
        state = self.server_state
        with state._lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            step, body = state.handle(self.path, headers, raw)
            # the overlap that lets a test see concurrent requests; a scripted sleep on top
            state._stopping.wait(state.delay + step.sleep)
        finally:
            with state._lock:
                state.in_flight -= 1
        data = json.dumps(body).encode()
        try:
            self.send_response(step.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if step.retry_after is not None:
                self.send_header("Retry-After", step.retry_after)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left: that is the scripted fault working

    def log_message(self, format: str, *args: Any) -> None:
        pass  # pytest output is no place for an access log


def _check_shape(
    request: dict[str, Any], known: set[str] | None, max_tokens: int | None
) -> tuple[str, bytes, str]:
    """(what is wrong or "", the image bytes, the prompt) of a chat-completions request."""
    messages = request.get("messages")
    if not (isinstance(messages, list) and len(messages) == 1 and isinstance(messages[0], dict)):
        return "expected exactly one message", b"", ""
    message = messages[0]
    content = message.get("content")
    if message.get("role") != "user" or not isinstance(content, list) or len(content) != 2:
        return "expected one user message with a text part and an image part", b"", ""
    texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    urls = [
        (p.get("image_url") or {}).get("url")
        for p in content
        if isinstance(p, dict) and p.get("type") == "image_url"
    ]
    if len(texts) != 1 or len(urls) != 1 or not isinstance(texts[0], str):
        return "expected one text part and one image_url part", b"", ""
    match = DATA_URL.match(urls[0] or "")
    if match is None:
        return "image_url is not a base64 data URL of png/jpeg/webp/gif", b"", ""
    try:
        image = base64.b64decode(match.group(2), validate=True)
    except binascii.Error:
        return "the data URL is not valid base64", b"", ""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image)) as img:
            actual = (img.format or "").lower()
    except OSError:
        return "the data URL holds no image", b"", ""
    if actual != match.group(1):
        return f"the data URL says image/{match.group(1)} but holds {actual}", b"", ""
    if known is not None and hashlib.sha256(image).hexdigest() not in known:
        return "the image is not one of the dataset's files", b"", ""
    if max_tokens is not None and request.get("max_tokens") != max_tokens:
        return f"max_tokens {request.get('max_tokens')!r} != {max_tokens}", b"", ""
    for key, kind in (("max_tokens", int), ("temperature", float), ("top_p", float)):
        if not isinstance(request.get(key), (int, float) if kind is float else int):
            return f"{key} missing or not a number", b"", ""
    if not isinstance(request.get("seed"), int):
        return "seed missing or not an integer", b"", ""
    return "", image, texts[0]


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 42,
            "completion_tokens": len(text.split()),
            "total_tokens": 42 + len(text.split()),
        },
    }


def _error(message: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


@contextmanager
def serve(**options: Any) -> Iterator[ChatServer]:
    """A started ChatServer (options as ChatServer's), stopped afterwards."""
    server = ChatServer(**options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
