"""The OpenAI-compatible backend: any server speaking ``POST /v1/chat/completions``.

vLLM, SGLang, TGI, LM Studio, Ollama and hosted APIs all accept the same request:
one user message holding the prompt text and the image as a base64 data URL.
Requests of a batch go out ``concurrency`` at a time. A request that keeps failing
(429, 5xx, timeouts, dropped connections, a malformed answer) fails its sample
only: the runner stores it as failed and retries it on resume. A refused key (401,
403) or an unknown model or URL (404) can fail no sample alone, so it stops the run.

The API key is read from the environment once, sent only in the Authorization
header, and cut out of every message this module writes (a server's error body
may echo the request's headers).
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import random
import threading
from collections.abc import Sequence
from typing import Any

import httpx

from cobra_eval.backends.base import BackendOptions, GenerationRequest
from cobra_eval.config import GenerationParams, redact_url
from cobra_eval.errors import BackendError, CobraEvalError
from cobra_eval.images import ImageError

#: First retry waits about this long (seconds); each further retry doubles it.
RETRY_BACKOFF_S = 0.5
#: No wait between retries is longer than this, a server's Retry-After included.
RETRY_BACKOFF_CAP_S = 20.0
#: Answers worth asking again: rate limits, overload, a gateway that lost the upstream.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Image formats every OpenAI-compatible server takes as a data URL; others are sent as PNG.
MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
#: Characters of a server's error body quoted in a message.
BODY_EXCERPT = 300
_REDACTED = "***"


class RequestFailedError(CobraEvalError):
    """One request failed after its retries, or its answer was malformed: its sample fails."""


class _Stop(Exception):
    """Another request of the batch hit a systemic error: give up without answering."""


class OpenAIBackend:
    """Generate by calling an OpenAI-compatible chat-completions server, requests in parallel."""

    def __init__(self, options: BackendOptions):
        """Check the options and read the API key; opens no connection."""
        extra = options.extra
        api_base = (extra.get("api_base") or "").strip()
        if not api_base:
            raise BackendError(
                "--backend openai needs the server's OpenAI-compatible base URL: pass --api_base "
                "URL (or set OPENAI_BASE_URL), e.g. --api_base http://localhost:8000/v1"
            )
        if not api_base.startswith(("http://", "https://")):
            raise BackendError(
                f"--api_base {redact_url(api_base)!r} is not an http(s) URL; "
                "e.g. --api_base http://localhost:8000/v1"
            )
        model = options.model
        if not model or model == "demo":
            raise BackendError(
                "--backend openai needs --model NAME: the model's name as the server knows it "
                "(e.g. the name given to `vllm serve`; GET <api_base>/models lists them)"
            )
        self.model = model
        self.url = api_base.rstrip("/") + "/chat/completions"
        self.api_key_env: str = extra.get("api_key_env") or "OPENAI_API_KEY"
        # private and never formatted: messages pass through _redact on the way out
        self._api_key = os.environ.get(self.api_key_env) or None
        self.concurrency = max(1, int(extra.get("concurrency", 4)))
        self.request_timeout = float(extra.get("request_timeout", 120.0))
        self.max_retries = max(0, int(extra.get("max_retries", 5)))
        self.retry_backoff_s = float(extra.get("retry_backoff_s", RETRY_BACKOFF_S))
        self._client: httpx.Client | None = None
        # until the server has answered once, a refused connection means it is not there at all
        self._answered = False

    def __repr__(self) -> str:
        key = f"${self.api_key_env}" if self._api_key else "none"
        return f"OpenAIBackend(model={self.model!r}, url={redact_url(self.url)!r}, key={key})"

    def identity(self) -> dict[str, Any]:
        """``{"name": model}``: the URL is left out so that a moved server keeps the fingerprint."""
        return {"name": self.model}

    def generate(
        self, requests: Sequence[GenerationRequest], params: GenerationParams
    ) -> list[str | Exception]:
        """One text per request, ``concurrency`` requests in flight; a failed one is its error.

        Raises BackendError when the server refuses the key or knows neither the URL
        nor the model: then no request can succeed.
        """
        if not requests:
            return []
        client = self._http()
        stop = threading.Event()
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(requests)):
            todo.put(index)
        done: queue.SimpleQueue[tuple[int, str | Exception]] = queue.SimpleQueue()

        def work() -> None:
            while not stop.is_set():
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    output: str | Exception = self._attempts(client, requests[index], params, stop)
                except Exception as exc:  # this request's own failure: its sample fails
                    output = exc
                    if isinstance(exc, BackendError):
                        # set before reporting: no worker starts another request meanwhile
                        stop.set()
                done.put((index, output))

        # Daemon threads rather than a ThreadPoolExecutor, whose workers are joined at exit:
        # after Ctrl-C the process would wait up to --request_timeout for a slow answer.
        # They only talk HTTP; everything is stored by the caller's thread.
        for _ in range(min(self.concurrency, len(requests))):
            threading.Thread(target=work, name="openai-request", daemon=True).start()
        outputs: dict[int, str | Exception] = {}
        try:
            while len(outputs) < len(requests):
                index, output = done.get()
                if isinstance(output, BackendError):
                    raise output
                outputs[index] = output
        finally:
            stop.set()  # after an error or Ctrl-C: queued requests are dropped, backoffs cut
        return [outputs[index] for index in range(len(requests))]

    def close(self) -> None:
        """Close the HTTP connections (a later generate opens new ones)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- one request --------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                timeout=httpx.Timeout(self.request_timeout),
                limits=httpx.Limits(max_connections=self.concurrency),
            )
        return self._client

    def _attempts(
        self,
        client: httpx.Client,
        request: GenerationRequest,
        params: GenerationParams,
        stop: threading.Event,
    ) -> str:
        body = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": request.prompt},
                        {"type": "image_url", "image_url": {"url": image_data_url(request)}},
                    ],
                }
            ],
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
        }
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        where = f"POST {redact_url(self.url)}"
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            if stop.is_set():
                raise _Stop()
            retry_after: float | None = None
            refused = False
            try:
                response = client.post(self.url, json=body, headers=headers)
            except httpx.TimeoutException as exc:
                problem = f"no answer within {self.request_timeout:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                problem = f"connection failed ({type(exc).__name__}: {self._redact(str(exc))})"
                refused = isinstance(exc, httpx.ConnectError)
            else:
                self._answered = True
                if response.status_code == 200:
                    return self._text(response, where)
                self._raise_if_systemic(response)
                problem = f"HTTP {response.status_code}: {self._excerpt(response)}"
                if response.status_code not in RETRY_STATUSES:
                    # 400, 413, 422, ...: this request itself is wrong; sending it again won't help
                    raise RequestFailedError(f"{where}: {problem}")
                retry_after = _seconds(response.headers.get("retry-after"))
            if attempt + 1 < attempts:
                # a set stop event ends the wait early; the loop then gives up
                stop.wait(self._delay(attempt, retry_after))
        tries = f"{attempts} attempts" if attempts > 1 else "1 attempt, no retries"
        if refused and not self._answered:
            raise BackendError(
                f"cannot reach the server: {where}: {problem} (gave up after {tries}); "
                "is it running, and is --api_base right?"
            )
        raise RequestFailedError(f"{where}: {problem} (gave up after {tries})")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, RETRY_BACKOFF_CAP_S)
        # jitter spreads out the retries of requests that failed together
        backoff = min(self.retry_backoff_s * 2**attempt, RETRY_BACKOFF_CAP_S)
        return backoff * random.uniform(0.5, 1.0)

    def _raise_if_systemic(self, response: httpx.Response) -> None:
        status = response.status_code
        said = self._excerpt(response)
        if status in (401, 403):
            if self._api_key is None:
                key = (
                    f"no API key was sent (${self.api_key_env} is not set): set it, or name "
                    "the variable holding the key with --api_key_env VAR"
                )
            else:
                key = (
                    f"the API key read from ${self.api_key_env} was refused: check it, or "
                    "name another variable with --api_key_env VAR"
                )
            raise BackendError(
                f"the server at {redact_url(self.url)} answered HTTP {status}; {key} "
                f"(server said: {said})"
            )
        if status in (404, 405):
            raise BackendError(
                f"the server answered HTTP {status} to POST {redact_url(self.url)} for model "
                f"{self.model!r} (server said: {said}); check that --api_base ends in /v1 "
                "(e.g. http://localhost:8000/v1) and that --model is the name the server "
                "serves (GET <api_base>/models lists them)"
            )

    def _text(self, response: httpx.Response, where: str) -> str:
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise RequestFailedError(
                f"{where}: not a chat-completions answer: {self._excerpt(response)}"
            ) from None
        if isinstance(content, list):  # some servers answer in content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise RequestFailedError(f"{where}: the answer has no text: {self._excerpt(response)}")
        return content.strip()

    def _excerpt(self, response: httpx.Response) -> str:
        """The server's error message (or body), key cut out BEFORE shortening."""
        text = response.text
        try:
            error = json.loads(text).get("error")
            message = error.get("message") if isinstance(error, dict) else error
            if isinstance(message, str) and message:
                text = message
        except (ValueError, AttributeError):
            pass  # not JSON, or not the usual {"error": {...}}: quote the raw body
        text = " ".join(self._redact(text).split())
        if len(text) > BODY_EXCERPT:
            text = text[:BODY_EXCERPT] + "..."
        return text or "(empty body)"

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, _REDACTED) if self._api_key else text


def image_data_url(request: GenerationRequest) -> str:
    """The request's image as a ``data:`` URL; raises ImageError when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    path = request.image_path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read the image ({exc})") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            mime = MIME_TYPES.get(img.format or "")
            if mime is None:
                # BMP, TIFF, ...: not every server decodes them, PNG everyone does
                buffer = io.BytesIO()
                img.convert("RGB").save(buffer, format="PNG")
                data, mime = buffer.getvalue(), "image/png"
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can read") from None
    except (OSError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: corrupt or unreadable image ({exc})") from None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _seconds(header: str | None) -> float | None:
    """A Retry-After header in seconds; None when absent or an HTTP date (not honoured)."""
    if header is None:
        return None
    try:
        value = float(header)
    except ValueError:
        return None
    return value if value >= 0 else None
