"""run.plan_digest: a resume of the same selection checks the plan without reading it

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 06:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # null for existing runs: their next resume reads the plan once and stores the digest
    with op.batch_alter_table("run") as batch:
        batch.add_column(sa.Column("plan_digest", sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.drop_column("plan_digest")
