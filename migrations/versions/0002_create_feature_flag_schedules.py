"""create feature_flag_schedules

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feature_flag_schedules",
        sa.Column(
            "id",
            postgresql.UUID(as_uuid=True),
            server_default=sa.text("gen_random_uuid()"),
            nullable=False,
        ),
        sa.Column("flag_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'pending'::text"), nullable=False),
        sa.Column("updates", postgresql.JSONB(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retry_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=True),
        sa.Column("next_retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        # Internal: when the schedule is next due, NULL once it never is again.
        sa.Column(
            "due_at",
            sa.DateTime(timezone=True),
            sa.Computed(
                "CASE WHEN status = 'pending' THEN scheduled_at"
                " WHEN status = 'failed' THEN next_retry_at END",
                persisted=True,
            ),
            nullable=True,
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'applied', 'failed', 'cancelled', 'superseded')",
            name=op.f("ck_feature_flag_schedules_status_valid"),
        ),
        sa.CheckConstraint(
            "retry_count >= 0", name=op.f("ck_feature_flag_schedules_retry_count_non_negative")
        ),
        sa.CheckConstraint(
            "max_retries IS NULL OR max_retries BETWEEN 0 AND 10",
            name=op.f("ck_feature_flag_schedules_max_retries_range"),
        ),
        sa.ForeignKeyConstraint(
            ["flag_id"],
            ["feature_flags.id"],
            name=op.f("fk_feature_flag_schedules_flag_id_feature_flags"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feature_flag_schedules")),
    )
    # The claim reads due rows in due order; finished rows (NULL) stay out of the index.
    op.create_index(
        op.f("ix_feature_flag_schedules_due_at"),
        "feature_flag_schedules",
        ["due_at"],
        postgresql_where=sa.text("due_at IS NOT NULL"),
    )
    # Serves the foreign key's cascade and "applied schedules of this flag after t".
    op.create_index(
        op.f("ix_feature_flag_schedules_flag_id_scheduled_at"),
        "feature_flag_schedules",
        ["flag_id", "scheduled_at"],
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_feature_flag_schedules_flag_id_scheduled_at"), table_name="feature_flag_schedules"
    )
    op.drop_index(op.f("ix_feature_flag_schedules_due_at"), table_name="feature_flag_schedules")
    op.drop_table("feature_flag_schedules")
