"""notification_outbox: alerts and FlagChanged events committed with their outcome

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REAL_MOMENT = "{0} >= '0001-01-02 00:00:00+00' AND {0} < '9999-12-31 00:00:00+00'"


def upgrade() -> None:
    # Written in the transaction of the outcome a message reports, delivered after commit and
    # deleted once delivered: a run killed in between leaves the message for the next run.
    op.create_table(
        "notification_outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "kind IN ('alert', 'digest', 'flag_changed')",
            name=op.f("ck_notification_outbox_kind_valid"),
        ),
        sa.CheckConstraint(
            "char_length(message_id) BETWEEN 1 AND 200",
            name=op.f("ck_notification_outbox_message_id_length"),
        ),
        sa.CheckConstraint(
            "jsonb_typeof(payload) = 'object'",
            name=op.f("ck_notification_outbox_payload_is_object"),
        ),
        sa.CheckConstraint(
            "attempts BETWEEN 0 AND 1000000", name=op.f("ck_notification_outbox_attempts_range")
        ),
        sa.CheckConstraint(
            "char_length(last_error) <= 2000",
            name=op.f("ck_notification_outbox_last_error_length"),
        ),
        # Every timestamp a client library can read back (see 0005).
        sa.CheckConstraint(
            REAL_MOMENT.format("created_at"),
            name=op.f("ck_notification_outbox_created_at_in_range"),
        ),
        sa.CheckConstraint(
            REAL_MOMENT.format("next_attempt_at"),
            name=op.f("ck_notification_outbox_next_attempt_at_in_range"),
        ),
        sa.CheckConstraint(
            REAL_MOMENT.format("last_attempt_at"),
            name=op.f("ck_notification_outbox_last_attempt_at_in_range"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_outbox")),
        # Consumers de-duplicate by message_id; the same report is never queued twice.
        sa.UniqueConstraint("message_id", name=op.f("uq_notification_outbox_message_id")),
    )
    # Delivery claims due messages oldest first.
    op.create_index(
        op.f("ix_notification_outbox_next_attempt_at_id"),
        "notification_outbox",
        ["next_attempt_at", "id"],
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_notification_outbox_next_attempt_at_id"), table_name="notification_outbox"
    )
    op.drop_table("notification_outbox")
