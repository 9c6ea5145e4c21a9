"""the HTTP API: who created a flag or schedule, who acted on it, and idempotency keys

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REAL_MOMENT = "{0} >= '0001-01-02 00:00:00+00' AND {0} < '9999-12-31 00:00:00+00'"


def upgrade() -> None:
    # Nullable: rows written before the API, or by writers that do not say who they are.
    op.add_column("feature_flags", sa.Column("created_by", sa.Text(), nullable=True))
    op.add_column("feature_flag_schedules", sa.Column("created_by", sa.Text(), nullable=True))
    # The caller behind an operator action (API token subject or e-mail, CLI user); the
    # scheduler's own attempts leave it NULL and name their invocation in request_id.
    op.add_column("feature_flag_schedule_attempts", sa.Column("actor", sa.Text(), nullable=True))
    # One row per (caller, Idempotency-Key): the primary key is what makes concurrent
    # duplicates of one request create one schedule (INSERT ... ON CONFLICT DO NOTHING).
    # No foreign key to the schedule: writers may TRUNCATE the contract tables, which a
    # reference from here would refuse; a key whose schedule is gone is dropped on replay.
    op.create_table(
        "api_idempotency_keys",
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.Text(), nullable=False),
        sa.Column("schedule_id", sa.UUID(), nullable=False),
        sa.Column("response", postgresql.JSONB(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "char_length(idempotency_key) BETWEEN 1 AND 255",
            name=op.f("ck_api_idempotency_keys_idempotency_key_length"),
        ),
        sa.CheckConstraint(
            REAL_MOMENT.format("created_at"),
            name=op.f("ck_api_idempotency_keys_created_at_in_range"),
        ),
        sa.PrimaryKeyConstraint("actor", "idempotency_key", name=op.f("pk_api_idempotency_keys")),
    )


def downgrade() -> None:
    op.drop_table("api_idempotency_keys")
    op.drop_column("feature_flag_schedule_attempts", "actor")
    op.drop_column("feature_flag_schedules", "created_by")
    op.drop_column("feature_flags", "created_by")
