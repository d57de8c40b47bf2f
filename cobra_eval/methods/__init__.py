"""Prompting methods: one module each, registered by name."""

from cobra_eval.methods.base import Method, MethodOutput, ParsedOutput, PassOutput
from cobra_eval.methods.registry import get_method, method_names, register_method, resolve_methods

__all__ = [
    "Method",
    "MethodOutput",
    "ParsedOutput",
    "PassOutput",
    "get_method",
    "method_names",
    "register_method",
    "resolve_methods",
]
