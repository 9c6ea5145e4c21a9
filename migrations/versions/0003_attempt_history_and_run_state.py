"""attempt history, last_error_class, requeued_at and the scheduler's run state

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ERROR_CLASSES = (
    "invalid_updates, flag_missing, data_error, integrity_error, serialization_failure,"
    " deadlock, lock_timeout, statement_timeout, connection_lost, expired, unknown"
)
ERROR_CLASS_CHECK = "error_class IN ({})".format(
    ", ".join(f"'{name.strip()}'" for name in ERROR_CLASSES.split(","))
)


def upgrade() -> None:
    op.add_column("feature_flag_schedules", sa.Column("last_error_class", sa.Text(), nullable=True))
    op.create_check_constraint(
        op.f("ck_feature_flag_schedules_last_error_class_valid"),
        "feature_flag_schedules",
        ERROR_CLASS_CHECK.replace("error_class", "last_error_class"),
    )
    # Set when an operator requeues a schedule by hand; the lateness limit counts from it.
    op.add_column(
        "feature_flag_schedules",
        sa.Column("requeued_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "feature_flag_schedule_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("schedule_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("error_class", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('applied', 'retry_scheduled', 'failed_permanently', 'superseded',"
            " 'expired', 'requeued', 'cancelled')",
            name=op.f("ck_feature_flag_schedule_attempts_outcome_valid"),
        ),
        sa.CheckConstraint(
            ERROR_CLASS_CHECK, name=op.f("ck_feature_flag_schedule_attempts_error_class_valid")
        ),
        # Operator actions (requeued, cancelled) are history rows but not attempts.
        sa.CheckConstraint(
            "(attempt IS NULL) = (outcome IN ('requeued', 'cancelled'))",
            name=op.f("ck_feature_flag_schedule_attempts_attempt_iff_attempted"),
        ),
        sa.CheckConstraint(
            "char_length(error) <= 2000",
            name=op.f("ck_feature_flag_schedule_attempts_error_length"),
        ),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["feature_flag_schedules.id"],
            name=op.f("fk_feature_flag_schedule_attempts_schedule_id"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feature_flag_schedule_attempts")),
    )
    op.create_index(
        op.f("ix_feature_flag_schedule_attempts_schedule_id_id"),
        "feature_flag_schedule_attempts",
        ["schedule_id", "id"],
    )
    # "Failures in the last 24 h" reads only failure rows, newest first.
    op.create_index(
        op.f("ix_feature_flag_schedule_attempts_failed_finished_at"),
        "feature_flag_schedule_attempts",
        ["finished_at"],
        postgresql_where=sa.text("outcome IN ('retry_scheduled', 'failed_permanently', 'expired')"),
    )
    # One row: what the last successful run did, for `flag-scheduler status`.
    op.create_table(
        "scheduler_run_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_run_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_run_finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_request_id", sa.Text(), nullable=True),
        sa.Column("last_summary", postgresql.JSONB(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_scheduler_run_state_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduler_run_state")),
    )


def downgrade() -> None:
    op.drop_table("scheduler_run_state")
    op.drop_index(
        op.f("ix_feature_flag_schedule_attempts_failed_finished_at"),
        table_name="feature_flag_schedule_attempts",
    )
    op.drop_index(
        op.f("ix_feature_flag_schedule_attempts_schedule_id_id"),
        table_name="feature_flag_schedule_attempts",
    )
    op.drop_table("feature_flag_schedule_attempts")
    op.drop_column("feature_flag_schedules", "requeued_at")
    op.drop_constraint(
        op.f("ck_feature_flag_schedules_last_error_class_valid"),
        "feature_flag_schedules",
        type_="check",
    )
    op.drop_column("feature_flag_schedules", "last_error_class")
