"""index applied schedules per flag

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # "Applied schedules of this flag after (scheduled_at, id)" (the supersede check) reads
    # only applied rows, however many pending or failed ones a flag has, and only later ones
    # even when many share one scheduled_at.
    op.create_index(
        op.f("ix_feature_flag_schedules_applied_flag_id_scheduled_at"),
        "feature_flag_schedules",
        ["flag_id", "scheduled_at", "id"],
        postgresql_where=sa.text("status = 'applied'"),
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_feature_flag_schedules_applied_flag_id_scheduled_at"),
        table_name="feature_flag_schedules",
    )
