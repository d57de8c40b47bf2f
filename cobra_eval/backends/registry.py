"""Finding a backend: built-in names, ``module:attribute`` plugins, entry points.

Built-ins are registered as import paths so that choosing one never imports
another's dependencies (and ``--help`` never imports torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from cobra_eval.backends.base import Backend, BackendOptions
from cobra_eval.errors import BackendError

ENTRY_POINT_GROUP = "cobra_eval.backends"
#: Built-in backends, name -> "module:attribute" of a factory taking BackendOptions.
BUILTIN: dict[str, str] = {
    "cobra": "cobra_eval.backends.cobra:CobraBackend",
    "hf": "cobra_eval.backends.hf:HFBackend",
    "openai": "cobra_eval.backends.openai_compat:OpenAIBackend",
}


def backend_names() -> list[str]:
    """Built-in and installed plugin backend names."""
    return sorted(set(BUILTIN) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def create_backend(spec: str, options: BackendOptions) -> Backend:
    """Instantiate the backend named by spec (a name or 'module:attribute')."""
    factory = _factory(spec)
    backend = factory(options)
    missing = [
        name for name in ("identity", "generate") if not callable(getattr(backend, name, None))
    ]
    if missing:
        raise BackendError(f"backend {spec!r} does not provide {', '.join(missing)}()")
    return backend


def _factory(spec: str) -> Callable[[BackendOptions], Any]:
    target = BUILTIN.get(spec)
    if target is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == spec:
                return ep.load()
    if target is None and ":" in spec:
        target = spec
    if target is None:
        known = ", ".join(backend_names()) or "none installed"
        raise BackendError(
            f"unknown backend {spec!r} (available: {known}); a plugin is given as "
            "'module:attribute', e.g. --backend mypkg.backend:MyBackend"
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"cannot import backend module {module_name!r}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise BackendError(f"backend module {module_name!r} has no attribute {attr!r}") from None
