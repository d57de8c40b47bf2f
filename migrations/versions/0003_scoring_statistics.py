"""per-sample scoring statistics and stored CIDEr-D document frequencies

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 08:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cider_document_frequency",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("n_images", sa.Integer(), nullable=False),
        sa.Column("n_ngrams", sa.Integer(), nullable=False),
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("rescored", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "n_images", name="uq_cider_df"),
    )
    op.create_index(
        op.f("ix_cider_document_frequency_run_id"),
        "cider_document_frequency",
        ["run_id"],
        unique=False,
    )
    with op.batch_alter_table("sample_result") as batch:
        batch.add_column(sa.Column("scoring", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sample_result") as batch:
        batch.drop_column("scoring")
    op.drop_index(op.f("ix_cider_document_frequency_run_id"), table_name="cider_document_frequency")
    op.drop_table("cider_document_frequency")
