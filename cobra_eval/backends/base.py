"""The Backend protocol every model backend meets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from cobra_eval.config import GenerationParams


class GenerationRequest(BaseModel):
    """One prompt about one image."""

    model_config = ConfigDict(frozen=True)

    image_path: Path = Field(description="The image file the prompt is about.")
    prompt: str = Field(description="The user prompt text (no chat template applied).")


class BackendOptions(BaseModel):
    """What a backend factory is given."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Model id or path (backend-specific).")
    device: str = Field("auto", description="auto | cpu | cuda | mps (backends that run locally).")
    dtype: str = Field("auto", description="auto | float32 | bfloat16 | float16.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Backend-specific options.")


@runtime_checkable
class Backend(Protocol):
    """A model that turns (image, prompt) requests into text, a batch at a time."""

    def identity(self) -> dict[str, Any]:
        """Model identity for the fingerprint (name, revision or weights hash); cheap."""
        ...

    def generate(
        self, requests: Sequence[GenerationRequest], params: GenerationParams
    ) -> Sequence[str | Exception]:
        """One output text per request, in order.

        A request that failed on its own may be answered by the exception in its
        place (the others keep their texts). Raising fails the call: the runner
        then retries its requests one at a time, and a BackendError stops the run.
        """
        ...
