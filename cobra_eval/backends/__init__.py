"""Model backends: one Protocol, found by name or plugin."""

from cobra_eval.backends.base import Backend, BackendOptions, GenerationRequest
from cobra_eval.backends.registry import backend_names, create_backend

__all__ = ["Backend", "BackendOptions", "GenerationRequest", "backend_names", "create_backend"]
