"""Run settings, the canonical semantic config, its fingerprint and differences.

The semantic config is what decides the *content* of a result: model, backend,
generation parameters, dataset identity and sample selection, method and its
prompts. Paths, sample counts, intervals, batch size and the database URL do
not change a result, so they never enter a fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

#: Top-level keys of the semantic config that belong to the run (shared by its methods).
RUN_KEYS = ("model", "generation", "dataset")
#: The key holding the per-method part of the semantic config.
METHOD_KEY = "method"
#: The key of the full config that holds non-semantic settings (ignored in comparisons).
SETTINGS_KEY = "settings"


class GenerationParams(BaseModel):
    """Decoding parameters handed to every backend call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int = Field(128, ge=1, description="Upper bound of generated tokens.")
    temperature: float = Field(0.0, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int = Field(0, description="Seed for sampling and any randomness in the backend.")


class RunSettings(BaseModel):
    """Everything one invocation of the run command was given."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field("baseline", description="A registered method name, or 'all'.")
    num_samples: int | None = Field(None, ge=1, description="Samples to plan; None = all.")
    checkpoint_interval: int = Field(
        10, ge=0, description="Export JSON every N samples (thinned after 16·N); 0 = never."
    )
    fixed_checkpoint_interval: bool = Field(
        False, description="Export at every multiple of checkpoint_interval, never thinned."
    )
    keep_checkpoints: int = Field(
        10, ge=0, description="Numbered checkpoint files kept per method and run; 0 = all."
    )
    resume_from_checkpoint: bool = Field(False, description="Continue the newest matching run.")
    load_results: Path | None = Field(None, description="A JSON results file to import first.")
    output_dir: Path = Field(Path("results"), description="Where run folders and the DB live.")
    db: str | None = Field(None, description="Database URL or SQLite path.")
    run_id: str | None = Field(None, description="Run to create, resume or extend.")
    fresh: bool = Field(False, description="Always start a new run.")
    batch_size: int = Field(8, ge=1, description="Samples per backend call.")
    durability: Literal["normal", "full"] = Field(
        "normal",
        description="SQLite: normal survives a process crash, full also a power loss.",
    )
    lease_seconds: float = Field(
        120.0, gt=0, description="A crashed worker's claimed samples are taken over after this."
    )
    backend: str = Field("hf", description="Backend name or 'module:attribute' plugin.")
    model: str | None = Field(None, description="Model id or path, interpreted by the backend.")
    dataset: str | None = Field("demo", description="'demo' or an annotation file path.")
    images: Path | None = Field(None, description="Folder holding the dataset's image files.")
    split: str | None = Field(None, description="Dataset split, where the format has splits.")
    sample_seed: int | None = Field(
        None, description="Plan a seeded random order instead of the dataset's own."
    )
    skip_missing: bool = Field(
        False, description="Plan without samples whose image is missing or that lack references."
    )
    generation: GenerationParams = Field(default_factory=GenerationParams)
    cache: bool = Field(True, description="Reuse generations from the generation cache.")
    prompts: Path | None = Field(None, description="JSON file overriding prompt templates.")
    llava_cot_instruction: bool = Field(
        True, description="Prefix llava_cot's question with the LLaVA-CoT format instruction."
    )
    api_base: str | None = Field(None, description="OpenAI-compatible server base URL.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Env variable holding the API key.")
    concurrency: int = Field(4, ge=1, description="Requests in flight (remote backends).")
    request_timeout: float = Field(120.0, gt=0, description="Seconds per request.")
    max_retries: int = Field(5, ge=0, description="Retries after 429/5xx/timeouts.")
    device: str = Field("auto", description="auto | cpu | cuda | mps.")
    dtype: str = Field("auto", description="auto | float32 | bfloat16 | float16.")
    metrics: tuple[str, ...] = Field(
        ("bleu", "meteor", "rouge", "cider", "spice"),
        description="Corpus metric groups computed at the end of each method; () for none.",
    )

    def settings_record(self) -> dict[str, Any]:
        """The non-semantic settings, as recorded beside the config in exports."""
        return {
            "num_samples": self.num_samples,
            "checkpoint_interval": self.checkpoint_interval,
            "fixed_checkpoint_interval": self.fixed_checkpoint_interval,
            "keep_checkpoints": self.keep_checkpoints,
            "batch_size": self.batch_size,
            "device": self.device,
            "dtype": self.dtype,
            "dataset_path": self.dataset,
            "images": str(self.images) if self.images else None,
            "durability": self.durability,
            **(
                {"api_base": redact_url(self.api_base), "concurrency": self.concurrency}
                if self.api_base
                else {}
            ),
        }

    def backend_extra(self) -> dict[str, Any]:
        """Options for backends that talk to a server (others ignore them)."""
        return {
            "api_base": self.api_base,
            "api_key_env": self.api_key_env,
            "concurrency": self.concurrency,
            "request_timeout": self.request_timeout,
            "max_retries": self.max_retries,
        }


def redact_url(url: str) -> str:
    """An http(s) URL without its password or query string (either may hold a key)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':')[0]}:***@{host}" if ":" in user else f"{user}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the one form that is hashed."""
    return json.dumps(_normal(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _normal(value: Any) -> Any:
    # 0.0 and 0 are the same setting; tools such as jq rewrite one as the other.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _normal(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normal(item) for item in value]
    return value


def fingerprint(value: Any) -> str:
    """A short stable hash of a config (or part of one)."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:16]


def run_part(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a semantic config shared by all methods of a run."""
    return {key: config.get(key) for key in RUN_KEYS}


def method_part(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a semantic config that belongs to one method."""
    part = config.get(METHOD_KEY)
    return dict(part) if isinstance(part, dict) else {"name": part}


def semantic(config: dict[str, Any]) -> dict[str, Any]:
    """Drop the non-semantic settings from a full config."""
    return {key: value for key, value in config.items() if key != SETTINGS_KEY}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists and scalars are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def diff_configs(stored: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Every dotted key whose value differs, with the stored and the current value."""
    old, new = flatten(stored), flatten(current)
    missing = object()
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            out.append((key, None if a is missing else a, None if b is missing else b))
    return out
