"""index idempotency keys by created_at, so expired ones are found without a scan

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The API deletes keys older than its retention in small batches, oldest first, on each
    # create: without this index every batch would read the whole table.
    op.create_index(
        op.f("ix_api_idempotency_keys_created_at"), "api_idempotency_keys", ["created_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_api_idempotency_keys_created_at"), table_name="api_idempotency_keys")
