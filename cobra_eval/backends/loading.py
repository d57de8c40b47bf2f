"""Loading a model once, on first use, and failing fast after a failed load."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from cobra_eval.errors import BackendError

T = TypeVar("T")


class LazyLoad(Generic[T]):
    """Calls load() the first time get() is called; a BackendError it raised is raised again.

    The runner retries a failed batch one request at a time: a model that did not
    load will not load for the next request either, and another attempt may be a
    slow download that times out.
    """

    def __init__(self, load: Callable[[], T]):
        self._load = load
        self._value: T | None = None
        self._error: BackendError | None = None

    @property
    def loaded(self) -> bool:
        return self._value is not None

    def get(self) -> T:
        if self._value is not None:
            return self._value
        if self._error is not None:
            raise self._error.with_traceback(None)
        try:
            self._value = self._load()
        except BackendError as exc:
            self._error = exc
            raise
        return self._value
