"""sample_result (run_id, method, status): progress and failures without reading every row

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # a resumed run counts each method's results and failures, and lists the failures to
    # retry: with status in an index these read the index, not 100,000 rows of ~1 KB
    op.create_index(
        "ix_sample_result_status", "sample_result", ["run_id", "method", "status"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_sample_result_status", table_name="sample_result")
