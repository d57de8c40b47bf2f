"""The method registry: ``--method`` choices come from here."""

from __future__ import annotations

from collections.abc import Callable

from cobra_eval.errors import ConfigError
from cobra_eval.methods.base import Method

_FACTORIES: dict[str, Callable[[], Method]] = {}


def register_method(name: str) -> Callable[[Callable[[], Method]], Callable[[], Method]]:
    """Decorator: register a zero-argument factory (usually the class) under a name."""

    def deco(factory: Callable[[], Method]) -> Callable[[], Method]:
        _FACTORIES[name] = factory
        return factory

    return deco


def method_names() -> list[str]:
    """Registered methods in registration order (the order of ``--method all``)."""
    _load_builtins()
    return list(_FACTORIES)


def get_method(name: str) -> Method:
    """A fresh instance of a registered method."""
    _load_builtins()
    try:
        return _FACTORIES[name]()
    except KeyError:
        raise ConfigError(
            f"unknown method {name!r}; choose one of: {', '.join(method_names())}, or 'all'"
        ) from None


def resolve_methods(spec: str) -> list[Method]:
    """'all' or one name -> the methods to run, in order."""
    if spec == "all":
        return [get_method(name) for name in method_names()]
    return [get_method(spec)]


#: Built-in method modules, in the order of ``--method all``.
BUILTIN_MODULES = ("baseline", "scratchpad", "llava_cot", "scratchpad_compare")


def _load_builtins() -> None:
    # Imported for their @register_method side effect; the first import fixes the order.
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(f"cobra_eval.methods.{module}")
