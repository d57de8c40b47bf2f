"""The method registry: ``--method`` choices come from here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cobra_eval.errors import ConfigError
from cobra_eval.methods.base import Method

#: A factory takes prompt overrides (or None) and the method's keyword options.
MethodFactory = Callable[..., Method]
_FACTORIES: dict[str, MethodFactory] = {}


def register_method(name: str) -> Callable[[MethodFactory], MethodFactory]:
    """Decorator: register a factory (usually the class) under a name.

    It is called as ``factory(prompts=overrides_or_None, **options)``.
    """

    def deco(factory: MethodFactory) -> MethodFactory:
        _FACTORIES[name] = factory
        return factory

    return deco


def method_names() -> list[str]:
    """Registered methods in registration order (the order of ``--method all``)."""
    _load_builtins()
    return list(_FACTORIES)


def get_method(
    name: str,
    prompts: Mapping[str, str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Method:
    """A fresh instance of a registered method, with prompt overrides and options."""
    _load_builtins()
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ConfigError(
            f"unknown method {name!r}; choose one of: {', '.join(method_names())}, or 'all'"
        )
    return factory(prompts=prompts, **(options or {}))


def resolve_methods(
    spec: str,
    prompts: Mapping[str, Mapping[str, str]] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Method]:
    """'all' or one name -> the methods to run, in order, each with its own overrides."""
    names = method_names() if spec == "all" else [spec]
    unknown = sorted(set(prompts or {}) - set(method_names()))
    if unknown:
        raise ConfigError(f"the prompts file names unknown method(s): {', '.join(unknown)}")
    for name, overrides in (prompts or {}).items():
        get_method(name, overrides, (options or {}).get(name))  # refuse a bad file up front
    return [
        get_method(name, (prompts or {}).get(name), (options or {}).get(name)) for name in names
    ]


#: Built-in method modules, in the order of ``--method all``.
BUILTIN_MODULES = ("baseline", "scratchpad", "llava_cot", "scratchpad_compare")


def _load_builtins() -> None:
    # Imported for their @register_method side effect; the first import fixes the order.
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(f"cobra_eval.methods.{module}")
