"""Prompt templates are data: defaults per method, overridable from a JSON file.

A prompts file maps method -> pass (or template name) -> text, e.g.
``{"baseline": {"caption": "Write a short caption."}}``. Only the templates it
names change; their text is part of the method's config, so it enters the run
fingerprint and a run with other prompts is never mixed with this one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from cobra_eval.errors import ConfigError

MAX_PROMPTS_FILE_BYTES = 1024 * 1024


def load_prompts_file(path: Path | None) -> dict[str, dict[str, str]]:
    """Read and shape-check a prompts file ({} when no file is given)."""
    if path is None:
        return {}
    try:
        if path.stat().st_size > MAX_PROMPTS_FILE_BYTES:
            raise ConfigError(f"--prompts {path}: larger than {MAX_PROMPTS_FILE_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--prompts {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--prompts {path}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--prompts {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(
        isinstance(templates, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in templates.items())
        for templates in data.values()
    ):
        raise ConfigError(
            f"--prompts {path}: expected an object of methods, each an object of "
            'template name -> text, e.g. {"baseline": {"caption": "..."}}'
        )
    return data


def merge_prompts(
    method: str,
    defaults: Mapping[str, str],
    overrides: Mapping[str, str] | None,
    placeholders: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, str]:
    """Defaults with overrides applied; unknown names and missing placeholders are errors."""
    merged = dict(defaults)
    for name, text in (overrides or {}).items():
        if name not in defaults:
            raise ConfigError(
                f"prompts for {method}: unknown template {name!r} "
                f"(it has {', '.join(sorted(defaults))})"
            )
        if not text.strip():
            raise ConfigError(f"prompts for {method}: template {name!r} is empty")
        needed = [f"{{{p}}}" for p in (placeholders or {}).get(name, ())]
        missing = [p for p in needed if p not in text]
        if missing:
            raise ConfigError(
                f"prompts for {method}: template {name!r} must contain {', '.join(missing)}"
            )
        merged[name] = text
    return merged
