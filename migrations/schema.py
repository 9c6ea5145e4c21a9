"""SQLAlchemy metadata of the migrated schema, used only by Alembic and its tests."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

# Every constraint and index gets a predictable name (Alembic naming.rst).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

SCHEDULE_STATUSES = ("pending", "applied", "failed", "cancelled", "superseded")

feature_flags = Table(
    "feature_flags",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("flag_key", Text, nullable=False),
    Column("environment", Text, nullable=False, server_default=text("'production'::text")),
    Column("enabled", Boolean, nullable=False, server_default=text("false")),
    Column("rollout_percentage", Integer, nullable=False, server_default=text("0")),
    Column("description", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint("rollout_percentage BETWEEN 0 AND 100", name="rollout_percentage_range"),
    UniqueConstraint("flag_key", "environment"),
)

feature_flag_schedules = Table(
    "feature_flag_schedules",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column(
        "flag_id",
        UUID(as_uuid=True),
        ForeignKey("feature_flags.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("scheduled_at", DateTime(timezone=True), nullable=False),
    Column("status", Text, nullable=False, server_default=text("'pending'::text")),
    Column("updates", JSONB, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=True),
    Column("retry_count", Integer, nullable=False, server_default=text("0")),
    Column("max_retries", Integer, nullable=True),
    Column("next_retry_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    # Internal: when the schedule is next due (NULL when it never is again); only the
    # scheduler reads it, writers never set it.
    Column(
        "due_at",
        DateTime(timezone=True),
        Computed(
            "CASE WHEN status = 'pending' THEN scheduled_at"
            " WHEN status = 'failed' THEN next_retry_at END",
            persisted=True,
        ),
    ),
    CheckConstraint(
        "status IN ('pending', 'applied', 'failed', 'cancelled', 'superseded')",
        name="status_valid",
    ),
    CheckConstraint("retry_count >= 0", name="retry_count_non_negative"),
    CheckConstraint(
        "max_retries IS NULL OR max_retries BETWEEN 0 AND 10", name="max_retries_range"
    ),
    Index(
        "ix_feature_flag_schedules_due_at",
        "due_at",
        postgresql_where=text("due_at IS NOT NULL"),
    ),
    Index("ix_feature_flag_schedules_flag_id_scheduled_at", "flag_id", "scheduled_at"),
)
