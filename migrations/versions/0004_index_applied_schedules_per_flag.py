"""index schedules per flag by (scheduled_at, id)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # "Applied schedules of this flag after (scheduled_at, id)" (the supersede check) is a
    # range scan on this index even when many schedules share one scheduled_at; it also
    # serves the foreign key's cascade. One index instead of two: every outcome written
    # updates every index of the row.
    op.create_index(
        op.f("ix_feature_flag_schedules_flag_id_scheduled_at_id"),
        "feature_flag_schedules",
        ["flag_id", "scheduled_at", "id"],
    )
    op.drop_index(
        op.f("ix_feature_flag_schedules_flag_id_scheduled_at"), table_name="feature_flag_schedules"
    )


def downgrade() -> None:
    op.create_index(
        op.f("ix_feature_flag_schedules_flag_id_scheduled_at"),
        "feature_flag_schedules",
        ["flag_id", "scheduled_at"],
    )
    op.drop_index(
        op.f("ix_feature_flag_schedules_flag_id_scheduled_at_id"),
        table_name="feature_flag_schedules",
    )
