"""The tables of the results database (SQLModel).

Schema changes go through Alembic migrations only (``migrations/``); a test
checks that autogenerate finds no difference between these models and head.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    Text,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

RunStatus = Literal["running", "finished", "interrupted"]
SampleStatus = Literal["ok", "failed"]
MetricScope = Literal["checkpoint", "final", "rescore"]


def utcnow() -> datetime:
    """Timezone-aware now, the one clock of the store."""
    return datetime.now(timezone.utc)


def _ts(**kw: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=DateTime(timezone=True), **kw)


class Run(SQLModel, table=True):
    """One evaluation run: a model, generation parameters and a dataset selection."""

    __tablename__ = "run"

    id: str = Field(
        primary_key=True, max_length=200, description="Run id, e.g. run_20251130_120000."
    )
    created_at: datetime = _ts(description="When the run was created (UTC).")
    created_by: str = Field(max_length=200, description="user@host that created the run.")
    tool_version: str = Field(max_length=50, description="cobra_eval version that created it.")
    config: dict[str, Any] = Field(
        sa_column=Column(JSON, nullable=False), description="Run-level semantic config."
    )
    fingerprint: str = Field(index=True, max_length=64, description="Hash of the run-level config.")
    status: str = Field(
        default="running", max_length=20, description="running | finished | interrupted."
    )
    plan_digest: str | None = Field(
        default=None,
        max_length=80,
        description="count:SHA-256 of the latest selection's ids in order, which the plan's "
        "first positions hold (null: not known): a resume checks this, not every planned row.",
    )


class RunMethod(SQLModel, table=True):
    """Progress of one method inside a run."""

    __tablename__ = "run_method"
    __table_args__ = (UniqueConstraint("run_id", "method", name="uq_run_method"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", max_length=200, description="The run.")
    method: str = Field(max_length=100, description="Method name.")
    config: dict[str, Any] = Field(
        sa_column=Column(JSON, nullable=False), description="Method-level config."
    )
    fingerprint: str = Field(max_length=64, description="Hash of the method-level config.")
    settings: dict[str, Any] = Field(
        sa_column=Column(JSON, nullable=False),
        description="Non-semantic settings of the latest invocation (num_samples, interval...).",
    )
    total_planned: int = Field(default=0, description="Samples the latest invocation asked for.")
    revision: int = Field(
        default=0,
        sa_column_kwargs={"server_default": "0"},
        description="Bumped by every change to stored results but an append: rescoring, "
        "replacing a failed result, merging. A checkpoint copies the bytes of results "
        "it wrote before only while this is unchanged.",
    )
    status: str = Field(
        default="running", max_length=20, description="running | finished | interrupted."
    )
    started_at: datetime = _ts(description="First time this method ran in the run.")
    updated_at: datetime = _ts(description="Last progress.")
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class PlannedSample(SQLModel, table=True):
    """The ordered sample plan of a run: position i holds one image id."""

    __tablename__ = "planned_sample"
    __table_args__ = (
        UniqueConstraint("run_id", "image_id", name="uq_planned_sample"),
        Index("ix_planned_sample_run_position", "run_id", "position"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", max_length=200)
    position: int = Field(description="0-based order in which samples are processed.")
    image_id: int = Field(sa_type=BigInteger, description="Dataset image id.")


class SampleResult(SQLModel, table=True):
    """One processed sample of one method: committed the moment it exists."""

    __tablename__ = "sample_result"
    __table_args__ = (
        UniqueConstraint("run_id", "method", "image_id", name="uq_sample_result"),
        # progress (results and failures per method) and the failures to retry, from the index
        Index("ix_sample_result_status", "run_id", "method", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", max_length=200)
    method: str = Field(max_length=100)
    image_id: int = Field(sa_type=BigInteger)
    status: str = Field(default="ok", max_length=20, description="ok | failed (then see error).")
    error: str | None = Field(default=None, sa_type=Text, description="Why the sample failed.")
    reference_captions: list[str] = Field(sa_column=Column(JSON, nullable=False))
    generated_caption: str = Field(default="", sa_type=Text)
    reasoning_trace: str = Field(default="", sa_type=Text)
    metadata_json: dict[str, Any] = Field(
        sa_column=Column("metadata", JSON, nullable=False), description="Method metadata."
    )
    metrics_json: dict[str, Any] = Field(
        sa_column=Column("metrics", JSON, nullable=False), description="Per-sample metrics."
    )
    scoring: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(JSON, nullable=True),
        description="What corpus scores pool: BLEU counts, METEOR statistics, CIDEr-D's N.",
    )
    worker: str = Field(default="", max_length=200, description="user@host:pid that produced it.")
    latency_s: float | None = Field(default=None, description="Wall seconds spent generating it.")
    created_at: datetime = _ts()


class SamplePass(SQLModel, table=True):
    """One generation pass of a sample (every method has at least one)."""

    __tablename__ = "sample_pass"
    __table_args__ = (UniqueConstraint("result_id", "pass_index", name="uq_sample_pass"),)

    id: int | None = Field(default=None, primary_key=True)
    result_id: int = Field(foreign_key="sample_result.id", index=True)
    pass_index: int
    name: str = Field(max_length=100)
    prompt: str = Field(sa_type=Text)
    raw_output: str = Field(sa_type=Text)
    caption: str = Field(sa_type=Text)
    reasoning: str = Field(default="", sa_type=Text)
    parse_status: str = Field(default="ok", max_length=100)
    metrics_json: dict[str, Any] = Field(sa_column=Column("metrics", JSON, nullable=False))


class MetricValue(SQLModel, table=True):
    """One metric of one sample (or one pass): narrow rows for plain SQL analysis."""

    __tablename__ = "metric_value"
    __table_args__ = (Index("ix_metric_value_result", "result_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    result_id: int = Field(foreign_key="sample_result.id")
    pass_id: int | None = Field(default=None, foreign_key="sample_pass.id")
    name: str = Field(max_length=100)
    value: float


class CorpusMetric(SQLModel, table=True):
    """A corpus-level score of a method over n samples, at a checkpoint or at the end."""

    __tablename__ = "corpus_metric"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", max_length=200, index=True)
    method: str = Field(max_length=100)
    metric: str = Field(max_length=100)
    value: float
    n_samples: int
    scope: str = Field(max_length=20, description="checkpoint | final | rescore.")
    created_at: datetime = _ts()


class CiderDocumentFrequency(SQLModel, table=True):
    """CIDEr-D's document frequencies of a run's first n_images planned samples.

    Per-sample CIDEr-D is exact only against the document frequencies of the
    whole evaluated set; they are fixed when a run plans its samples, kept here,
    and replaced (with the earlier samples rescored) when the run is extended.
    """

    __tablename__ = "cider_document_frequency"
    __table_args__ = (UniqueConstraint("run_id", "n_images", name="uq_cider_df"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", max_length=200, index=True)
    n_images: int = Field(description="Planned samples with references: N of log(N).")
    n_ngrams: int = Field(description="Distinct n-grams (n = 1..4) in their references.")
    sha256: str = Field(max_length=64, description="Hash of data.")
    data: bytes = Field(
        sa_column=Column(LargeBinary, nullable=False),
        description='gzip JSON {"n_images": N, "df": [["n gram", count], ...]}.',
    )
    rescored: dict[str, int] = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=False),
        description="Earlier samples rescored per method when these became current.",
    )
    created_at: datetime = _ts()


class SampleClaim(SQLModel, table=True):
    """A worker's claim on a sample of a method: while it is live, no other worker takes it.

    Workers sharing a run claim small batches; a claim that is not renewed
    (its worker crashed) expires at ``expires_at`` and is taken over.
    """

    __tablename__ = "sample_claim"
    __table_args__ = (Index("ix_sample_claim_live", "run_id", "method", "expires_at"),)

    run_id: str = Field(foreign_key="run.id", max_length=200, primary_key=True)
    method: str = Field(max_length=100, primary_key=True)
    image_id: int = Field(
        sa_column=Column(BigInteger, primary_key=True, autoincrement=False, nullable=False)
    )
    worker: str = Field(max_length=200, description="user@host:pid holding it.")
    claimed_at: datetime = _ts()
    expires_at: datetime = Field(sa_type=DateTime(timezone=True))


class ExportLease(SQLModel, table=True):
    """Who is writing a (run, method)'s checkpoint files: one exporter at a time."""

    __tablename__ = "export_lease"

    run_id: str = Field(foreign_key="run.id", max_length=200, primary_key=True)
    method: str = Field(max_length=100, primary_key=True)
    worker: str = Field(max_length=200)
    expires_at: datetime = Field(sa_type=DateTime(timezone=True))


class Checkpoint(SQLModel, table=True):
    """A JSON snapshot that was exported (the file may since have been deleted)."""

    __tablename__ = "checkpoint"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", max_length=200, index=True)
    method: str = Field(max_length=100)
    count: int = Field(description="Samples processed when it was written.")
    is_final: bool = Field(default=False)
    path: str = Field(sa_type=Text)
    bytes: int
    sha256: str = Field(max_length=64)
    created_at: datetime = _ts()


class GenerationCache(SQLModel, table=True):
    """A model output keyed by everything that decides it: reruns and shared passes reuse it."""

    __tablename__ = "generation_cache"

    key: str = Field(
        primary_key=True,
        max_length=64,
        description="sha256 of model identity, prompt, image bytes and generation parameters.",
    )
    output: str = Field(sa_type=Text, description="The raw generated text.")
    created_at: datetime = _ts()
