"""A JSON annotation file's top-level arrays, one item at a time (ijson): a big file is
never held parsed whole.

COCO train's captions file (118,000 images, 590,000 captions) parses into about
five times its size in Python objects; streamed, a loader keeps only what its
samples need. ijson's C backend builds each item, one pass over the file per
array. Files the streaming parser refuses (a syntax error, or NaN, which Python's
json reads) or would decode otherwise (an escaped UTF-16 surrogate) are parsed
whole by ``json`` instead, which also names a syntax error's line and column.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import ijson

from cobra_eval.datasets.files import blocks, open_binary, read_json, unreadable

T = TypeVar("T")


#: A \\uD800-\\uDFFF escape: ijson's C parser turns a lone one into "?" where json keeps it
#: (and selection then refuses or skips that sample), so such files are parsed whole.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
#: Streaming pays only with a compiled backend: ijson's pure-Python one (where no wheel
#: fits the platform) read a 75 MB COCO file in 22 s, where json parsed it whole in 0.6 s.
STREAMING = ijson.backend_name in ("yajl2_c", "yajl2_cffi")


class JsonArrays:
    """The items of a file's top-level arrays, each array streamed from the file.

    Made by read_arrays, which reads the file once first: its identity (a hash
    of its bytes) and whether it holds an escape the streaming parser would not
    decode as json does.
    """

    def __init__(self, path: Path, identity: str):
        self.path, self.identity = path, identity

    def items(self, key: str) -> Iterator[Any]:
        """The items of the top-level member key; none unless it is an array."""
        with open_binary(self.path) as handle:
            try:
                yield from ijson.items(handle, f"{key}.item", use_float=True)
            except OSError as exc:
                raise unreadable(self.path, exc) from None

    def whole(self) -> Any:
        """The file parsed whole: for telling why an array has no items."""
        return read_json(self.path)[0]


class ParsedArrays(JsonArrays):
    """The same, from the file parsed whole."""

    def __init__(self, path: Path, identity: str):
        super().__init__(path, identity)
        self.data = read_json(path)[0]

    def items(self, key: str) -> Iterator[Any]:
        value = self.data.get(key) if isinstance(self.data, dict) else None
        return iter(value if isinstance(value, list) else ())

    def whole(self) -> Any:
        return self.data


def read_arrays(path: Path, build: Callable[[JsonArrays], T]) -> T:
    """build(the file's arrays, streamed); if the streaming parser cannot read the file as
    json does, build again from the start on the file parsed whole (json's errors if invalid)."""
    identity, escapes = _scan(path)
    if STREAMING and not escapes:
        try:
            return build(JsonArrays(path, identity))
        except (ijson.JSONError, UnicodeDecodeError):
            pass
    return build(ParsedArrays(path, identity))


def _scan(path: Path) -> tuple[str, bool]:
    """The file's identity (sha256 of its bytes) and whether it holds a surrogate escape."""
    digest, escapes, tail = hashlib.sha256(), False, b""
    for block in blocks(path):
        digest.update(block)
        # an escape may straddle two blocks: its first bytes end the last one
        escapes = escapes or _SURROGATE_ESCAPE.search(tail + block) is not None
        tail = block[-8:]
    return "sha256:" + digest.hexdigest(), escapes
