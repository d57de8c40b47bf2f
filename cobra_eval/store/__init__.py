"""The results database and the JSON checkpoint contract."""

from cobra_eval.store.engine import mask_url, resolve_url
from cobra_eval.store.repository import MethodInfo, MethodProgress, RunInfo, Store

__all__ = ["MethodInfo", "MethodProgress", "RunInfo", "Store", "mask_url", "resolve_url"]
