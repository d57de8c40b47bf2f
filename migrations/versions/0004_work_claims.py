"""work claims and the export lease: many workers on one run

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 09:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sample_claim",
        sa.Column("run_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("method", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("image_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("worker", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"]),
        sa.PrimaryKeyConstraint("run_id", "method", "image_id"),
    )
    op.create_index(
        "ix_sample_claim_live", "sample_claim", ["run_id", "method", "expires_at"], unique=False
    )
    op.create_table(
        "export_lease",
        sa.Column("run_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("method", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("worker", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"]),
        sa.PrimaryKeyConstraint("run_id", "method"),
    )


def downgrade() -> None:
    op.drop_table("export_lease")
    op.drop_index("ix_sample_claim_live", table_name="sample_claim")
    op.drop_table("sample_claim")
