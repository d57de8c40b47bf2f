"""The Method protocol: prompts for each pass, parsing, and the final caption."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field


class ParsedOutput(BaseModel):
    """What a method reads out of one raw generation."""

    caption: str = Field(
        description="The caption this pass produced (a fallback if parsing failed)."
    )
    reasoning: str = Field("", description="Scratchpad or reasoning text, if any.")
    parse_status: str = Field("ok", description="ok, fallback:<reason>, or empty.")
    details: dict[str, Any] = Field(default_factory=dict, description="Method-specific parse data.")


class PassOutput(BaseModel):
    """One completed pass: its prompt, the raw generation and what was parsed from it."""

    name: str
    prompt: str
    raw_output: str
    caption: str
    reasoning: str = ""
    parse_status: str = "ok"
    details: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float | None] = Field(default_factory=dict)
    cached: bool = Field(False, description="The output came from the generation cache.")


class MethodOutput(BaseModel):
    """The sample-level outcome of a method."""

    generated_caption: str
    reasoning_trace: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


@runtime_checkable
class Method(Protocol):
    """A prompting method. Passes run in order; each may see the passes before it."""

    name: str
    pass_names: tuple[str, ...]

    def config(self) -> dict[str, Any]:
        """Prompt templates and options: part of the fingerprint."""
        ...

    def build_prompt(self, pass_name: str, previous: Sequence[PassOutput]) -> str:
        """The prompt of a pass, given the passes already done for this sample."""
        ...

    def parse(self, pass_name: str, raw: str) -> ParsedOutput:
        """Read a raw generation; never raises on odd model output."""
        ...

    def finalize(self, passes: Sequence[PassOutput]) -> MethodOutput:
        """The sample's caption, reasoning trace and metadata from all its passes."""
        ...
