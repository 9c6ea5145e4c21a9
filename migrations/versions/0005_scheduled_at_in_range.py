"""scheduled_at must be a real moment

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # -infinity, infinity and years before 1 are valid timestamptz values that no client
    # library can represent: a writer's typo would otherwise be claimed first, fail to
    # load, and block every run. Refuse them at insert instead.
    op.create_check_constraint(
        op.f("ck_feature_flag_schedules_scheduled_at_in_range"),
        "feature_flag_schedules",
        "scheduled_at >= '0001-01-02 00:00:00+00' AND scheduled_at < '9999-12-31 00:00:00+00'",
    )


def downgrade() -> None:
    op.drop_constraint(
        op.f("ck_feature_flag_schedules_scheduled_at_in_range"),
        "feature_flag_schedules",
        type_="check",
    )
