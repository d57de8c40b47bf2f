"""Producing generations for a batch: cache lookups first, per-sample failures isolated.

Reusing generations: the same model, prompt, image and parameters give the same
text. The cache key hashes the model identity, the full prompt, the image's bytes and the
generation parameters, so a different model, prompt or parameter never hits.
With ``--method all`` this lets scratchpad_compare's first two passes reuse the
baseline and scratchpad generations of the same images.

The runner claims samples a block of batches ahead; ``prefetch`` hashes their
images and looks their first pass up in the cache in a background thread, so the
model's thread neither hashes nor queries for them (a query there also waits for
the GIL, held meanwhile by the thread that commits and exports).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cobra_eval.backends import Backend, GenerationRequest
from cobra_eval.config import GenerationParams, canonical_json
from cobra_eval.errors import BackendError
from cobra_eval.store import Store
from cobra_eval.text import mend


@dataclass(frozen=True)
class Generated:
    """One request's outcome: text (or the exception it raised) and whether it came from cache."""

    output: str | Exception
    cached: bool


#: Image digests and lookups made ahead kept at most (a run streams: memory stays flat).
LOOKED_UP_LIMIT = 4096


class CachedGenerator:
    """Generate through a backend, looking each request up in the store's cache first."""

    def __init__(
        self, backend: Backend, store: Store, model_identity: dict[str, Any], *, enabled: bool
    ):
        self.backend, self.store, self.enabled = backend, store, enabled
        self.model_key = canonical_json(model_identity)
        # every key starts with the model identity: hashed once, copied per key
        self._model_hash = hashlib.sha256(f"{self.model_key}\0".encode())
        #: image digests by path, hashed by the batch that needs them or ahead of it (prefetch)
        self._image_hashes: dict[Path, str] = {}
        #: cache lookups made ahead (prefetch): key -> output, or None where none was cached
        self._looked_up: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._hasher: ThreadPoolExecutor | None = None
        self._params: tuple[GenerationParams, str] | None = None
        #: generations not yet written to the cache (save writes them)
        self._unsaved: dict[str, str] = {}
        self.generated = 0
        self.hits = 0

    def key(self, request: GenerationRequest, params: GenerationParams) -> str | None:
        """The cache key of a request, or None when its image cannot be read (it will fail)."""
        digest = self._image_hashes.get(request.image_path) or self._hash_image(request.image_path)
        if digest is None:
            return None
        # the same bytes as sha256 of "\0".join([model_key, prompt, digest, params])
        material = "\0".join([request.prompt, digest, self._params_key(params)])
        key = self._model_hash.copy()
        key.update(material.encode("utf-8"))
        return key.hexdigest()

    def save(self) -> None:
        """Write the generations made since the last save to the cache, in one transaction.

        The runner calls it after each batch is generated, before the next one is,
        and whenever a run stops (an error, Ctrl-C).
        """
        with self._lock:
            unsaved = dict(self._unsaved)
        if not unsaved:
            return
        # kept until written: a lookup meanwhile finds them, a failed write leaves them
        self.store.cache_outputs(unsaved)
        with self._lock:
            for key, output in unsaved.items():
                self._unsaved.pop(key, None)
                if key in self._looked_up:
                    # looked up ahead before it was generated: a later batch finds it now
                    self._looked_up[key] = output

    def prefetch(self, requests: Sequence[GenerationRequest], params: GenerationParams) -> None:
        """Hash these requests' images and look them up in the cache, in a background thread.

        The batches that need them then neither hash nor query on the model's thread,
        where the model waits for each (and, on SQLite, for the GIL after each query).
        """
        if self.enabled and requests:
            if self._hasher is None:
                self._hasher = ThreadPoolExecutor(1, "hash-images")
            self._hasher.submit(self._warm, list(requests), params)

    def _warm(self, requests: Iterable[GenerationRequest], params: GenerationParams) -> None:
        keys = {key for key in (self.key(r, params) for r in requests) if key is not None}
        with self._lock:
            keys -= self._unsaved.keys()
        if not keys:
            return
        try:
            found = self.store.cached_outputs(list(keys))
        except Exception:
            return  # an optimization only: the batch looks up what was not looked up ahead
        with self._lock:
            for key in keys:
                self._looked_up[key] = found.get(key)
            while len(self._looked_up) > LOOKED_UP_LIMIT:  # a run streams: keep memory flat
                self._looked_up.pop(next(iter(self._looked_up)))

    def close(self) -> None:
        """Stop working ahead (what was not hashed or looked up is, when a batch needs it)."""
        if self._hasher is not None:
            self._hasher.shutdown(wait=True, cancel_futures=True)
            self._hasher = None

    def _hash_image(self, path: Path) -> str | None:
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return None
        with self._lock:
            self._image_hashes[path] = digest
            if len(self._image_hashes) > LOOKED_UP_LIMIT:  # a run streams: keep memory flat
                self._image_hashes.pop(next(iter(self._image_hashes)))
        return digest

    def _params_key(self, params: GenerationParams) -> str:
        """The parameters' canonical JSON, made once while they stay the same."""
        # frozen: the same object (a run's every call) has the same key, unlike an equal one
        if self._params is None or (self._params[0] is not params and self._params[0] != params):
            self._params = (params, canonical_json(params.model_dump()))
        return self._params[1]

    def generate(
        self, requests: Sequence[GenerationRequest], params: GenerationParams
    ) -> list[Generated]:
        """Outputs for every request, from the cache where possible, the rest in one batch."""
        keys = [self.key(r, params) if self.enabled else None for r in requests]
        # outputs not written yet first: one whose write commits meanwhile is then in the
        # database (save forgets them only after), then those looked up ahead, and the
        # query asks for the others only
        with self._lock:
            known = {k: self._unsaved[k] for k in keys if k in self._unsaved}
            ahead = {
                k: self._looked_up.pop(k) for k in set(keys) - known.keys() if k in self._looked_up
            }
        known.update({k: output for k, output in ahead.items() if output is not None})
        rest = [k for k in keys if k and k not in known and k not in ahead]
        if rest:
            known.update(self.store.cached_outputs(rest))
        out: list[Generated | None] = [
            Generated(known[k], True) if k in known else None for k in keys
        ]
        missing = [i for i, item in enumerate(out) if item is None]
        fresh = generate_isolated(self.backend, [requests[i] for i in missing], params)
        with self._lock:
            for i, output in zip(missing, fresh, strict=True):
                out[i] = Generated(output, False)
                key = keys[i]
                if key is not None and isinstance(output, str):
                    self._unsaved.setdefault(key, output)
        self.generated += len(missing)
        self.hits += len(requests) - len(missing)
        return [item for item in out if item is not None]


def generate_isolated(
    backend: Backend, requests: Sequence[GenerationRequest], params: GenerationParams
) -> list[str | Exception]:
    """Generate a batch; if it raises, retry one by one so only the failing samples fail.

    This is the one place where per-sample failures are caught: the error is
    stored with its sample and the run goes on.
    """
    try:
        outputs = backend.generate(requests, params)
    except BackendError:
        raise  # the model itself is unusable: no sample could succeed
    except Exception as exc:  # any other failure is data for the sample(s) it hit
        if len(requests) == 1:
            return [exc]
        return [generate_isolated(backend, [r], params)[0] for r in requests]
    if len(outputs) != len(requests):
        raise RuntimeError(
            f"backend returned {len(outputs)} outputs for {len(requests)} requests (a backend bug)"
        )
    for output in outputs:
        if isinstance(output, BackendError):
            raise output
    # a lone surrogate (half of a JSON-escaped pair) would fail every write of this output
    return [mend(output) if isinstance(output, str) else output for output in outputs]
