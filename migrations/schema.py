"""SQLAlchemy metadata of the migrated schema, used only by Alembic and its tests."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from flag_scheduler.engine import limits
from flag_scheduler.engine.states import (
    MAX_RAMP_STAGES,
    ErrorClass,
    InsufficientData,
    MessageKind,
    Outcome,
    RampAction,
    RampState,
    Status,
)

# Every constraint and index gets a predictable name (Alembic naming.rst).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# The CHECK lists, in the order the migrations wrote them (a CHECK's text is compared
# with the database's by tests/store/test_schema_checks.py): a value added to one of
# these enums needs a migration that replaces the check.
SCHEDULE_STATUSES = tuple(status.value for status in Status)
ERROR_CLASSES = tuple(error_class.value for error_class in ErrorClass)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _in_range(*columns: str) -> list[CheckConstraint]:
    """One check per timestamp column that it holds a loadable moment (or NULL): infinity,
    -infinity and years outside 1..9999 are valid timestamptz values that fail a run or
    `status` when read (0005, 0006)."""
    return [
        CheckConstraint(limits.time_in_range_sql(column), name=f"{column}_in_range")
        for column in columns
    ]


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
    # Who created the flag through the API or the CLI (0009); NULL for other writers.
    Column("created_by", Text, nullable=True),
    CheckConstraint("rollout_percentage BETWEEN 0 AND 100", name="rollout_percentage_range"),
    UniqueConstraint("flag_key", "environment"),
    *_in_range("created_at", "updated_at"),
)

# Not in the metadata (Alembic compares no triggers): migration 0008 installs a trigger that
# refuses inserted or renamed flags whose key or environment break these rules, raising
# check_violation as a CHECK would, but unlike a CHECK it leaves rows that predate the rule
# updatable. tests/store/test_migrations.py compares the installed rule with these.
FLAG_NAMES_TRIGGER = "tr_feature_flags_names_valid"
FLAG_KEY_REGEX = limits.regex_sql(limits.FLAG_KEY_PATTERN)
ENVIRONMENT_REGEX = limits.regex_sql(limits.ENVIRONMENT_PATTERN)

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
    Column("last_error_class", Text, nullable=True),
    # Internal: set when an operator requeues by hand; the lateness limit counts from it.
    Column("requeued_at", DateTime(timezone=True), nullable=True),
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
    # Who created the schedule through the API or the CLI (0009); NULL for other writers.
    Column("created_by", Text, nullable=True),
    CheckConstraint(_in("status", SCHEDULE_STATUSES), name="status_valid"),
    # The engine never writes more than 10: retry_count grows only below max_retries (<= 10).
    CheckConstraint("retry_count BETWEEN 0 AND 10", name="retry_count_range"),
    *_in_range(
        "scheduled_at", "applied_at", "next_retry_at", "created_at", "updated_at", "requeued_at"
    ),
    CheckConstraint(
        "(status = 'applied') = (applied_at IS NOT NULL)", name="applied_at_iff_applied"
    ),
    # Set: waiting for a retry; NULL on a failed row: permanently failed.
    CheckConstraint(
        "next_retry_at IS NULL OR status = 'failed'", name="next_retry_at_only_if_failed"
    ),
    CheckConstraint("char_length(last_error) <= 2000", name="last_error_length"),
    CheckConstraint(_in("last_error_class", ERROR_CLASSES), name="last_error_class_valid"),
    CheckConstraint(
        "max_retries IS NULL OR max_retries BETWEEN 0 AND 10", name="max_retries_range"
    ),
    # Internal (0010): a ramp's stage schedules name their ramp and stage (0-based).
    Column(
        "ramp_id",
        UUID(as_uuid=True),
        ForeignKey("flag_ramps.id", ondelete="CASCADE"),
        nullable=True,
    ),
    Column("ramp_stage", Integer, nullable=True),
    CheckConstraint(
        f"(ramp_id IS NULL) = (ramp_stage IS NULL) AND ramp_stage BETWEEN 0 AND {MAX_RAMP_STAGES}",
        name="ramp_stage_iff_ramp_id",
    ),
    # At most one live stage per ramp (pending, or failed and waiting for a retry) ...
    Index(
        "uq_feature_flag_schedules_ramp_id_live",
        "ramp_id",
        unique=True,
        postgresql_where=text(
            "ramp_id IS NOT NULL AND (status = 'pending' OR next_retry_at IS NOT NULL)"
        ),
    ),
    # ... and each stage once (a paused ramp's cancelled stage is created again on resume).
    Index(
        "uq_feature_flag_schedules_ramp_id_ramp_stage",
        "ramp_id",
        "ramp_stage",
        unique=True,
        postgresql_where=text("ramp_id IS NOT NULL AND status <> 'cancelled'"),
    ),
    # A ramp's stage schedules, cancelled ones included (show, resume, the cascade).
    Index(
        "ix_feature_flag_schedules_ramp_id_ramp_stage",
        "ramp_id",
        "ramp_stage",
        postgresql_where=text("ramp_id IS NOT NULL"),
    ),
    Index(
        "ix_feature_flag_schedules_due_at",
        "due_at",
        postgresql_where=text("due_at IS NOT NULL"),
    ),
    Index("ix_feature_flag_schedules_flag_id_scheduled_at_id", "flag_id", "scheduled_at", "id"),
)

ATTEMPT_OUTCOMES = tuple(outcome.value for outcome in Outcome)

feature_flag_schedule_attempts = Table(
    "feature_flag_schedule_attempts",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column(
        "schedule_id",
        UUID(as_uuid=True),
        ForeignKey(
            "feature_flag_schedules.id",
            ondelete="CASCADE",
            # The conventional name would pass PostgreSQL's 63-character limit.
            name="fk_feature_flag_schedule_attempts_schedule_id",
        ),
        nullable=False,
    ),
    # NULL for operator actions (requeued, cancelled), which are history but not attempts.
    Column("attempt", Integer, nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("outcome", Text, nullable=False),
    Column("error_class", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("request_id", Text, nullable=True),
    # The caller behind an operator action (0009); NULL for the scheduler's own attempts.
    Column("actor", Text, nullable=True),
    CheckConstraint(_in("outcome", ATTEMPT_OUTCOMES), name="outcome_valid"),
    CheckConstraint(_in("error_class", ERROR_CLASSES), name="error_class_valid"),
    # A schedule parked as unrecordable has no attempt number: it may be what overflowed.
    CheckConstraint(
        "(attempt IS NULL) = (outcome IN ('requeued', 'cancelled')"
        " OR coalesce(error_class = 'unrecordable', false))",
        name="attempt_iff_attempted",
    ),
    CheckConstraint("char_length(error) <= 2000", name="error_length"),
    *_in_range("started_at", "finished_at"),
    Index("ix_feature_flag_schedule_attempts_schedule_id_id", "schedule_id", "id"),
    Index(
        "ix_feature_flag_schedule_attempts_failed_finished_at",
        "finished_at",
        postgresql_where=text("outcome IN ('retry_scheduled', 'failed_permanently', 'expired')"),
    ),
)

scheduler_run_state = Table(
    "scheduler_run_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_run_started_at", DateTime(timezone=True), nullable=False),
    Column("last_run_finished_at", DateTime(timezone=True), nullable=False),
    Column("last_request_id", Text, nullable=True),
    Column("last_summary", JSONB, nullable=False),
    CheckConstraint("id = 1", name="single_row"),
    *_in_range("last_run_started_at", "last_run_finished_at"),
)

OUTBOX_KINDS = tuple(kind.value for kind in MessageKind)

# Alerts and FlagChanged events written in the transaction of the outcome they report,
# deleted once delivered (flag_scheduler.engine.delivery).
notification_outbox = Table(
    "notification_outbox",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("message_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column(
        "next_attempt_at", DateTime(timezone=True), nullable=False, server_default=text("now()")
    ),
    Column("last_attempt_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    CheckConstraint(_in("kind", OUTBOX_KINDS), name="kind_valid"),
    CheckConstraint("char_length(message_id) BETWEEN 1 AND 200", name="message_id_length"),
    CheckConstraint("jsonb_typeof(payload) = 'object'", name="payload_is_object"),
    CheckConstraint("attempts BETWEEN 0 AND 1000000", name="attempts_range"),
    CheckConstraint("char_length(last_error) <= 2000", name="last_error_length"),
    *_in_range("created_at", "next_attempt_at", "last_attempt_at"),
    UniqueConstraint("message_id"),
    Index("ix_notification_outbox_next_attempt_at_id", "next_attempt_at", "id"),
)

# One row per (caller, Idempotency-Key) of POST /flags/{flag_key}/schedules (0009): the
# schedule the first request created and the response it got, replayed to a retry. No
# foreign key: writers may TRUNCATE the contract tables; a stale key is dropped on replay.
api_idempotency_keys = Table(
    "api_idempotency_keys",
    metadata,
    Column("actor", Text, primary_key=True),
    Column("idempotency_key", Text, primary_key=True),
    Column("request_hash", Text, nullable=False),
    Column("schedule_id", UUID(as_uuid=True), nullable=False),
    Column("response", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint(
        "char_length(idempotency_key) BETWEEN 1 AND 255", name="idempotency_key_length"
    ),
    *_in_range("created_at"),
    Index("ix_api_idempotency_keys_created_at", "created_at"),
)

RAMP_STATES = tuple(state.value for state in RampState)
RAMP_ACTIONS = tuple(action.value for action in RampAction)
INSUFFICIENT_DATA_CHOICES = tuple(choice.value for choice in InsufficientData)

# Gradual rollouts (0010; the contract is in that migration's docstring and docs/design.md).
flag_ramps = Table(
    "flag_ramps",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column(
        "flag_id",
        UUID(as_uuid=True),
        ForeignKey("feature_flags.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("state", Text, nullable=False, server_default=text("'active'::text")),
    Column("starts_at", DateTime(timezone=True), nullable=False),
    Column("stages", JSONB, nullable=False),
    Column("end_updates", JSONB, nullable=True),
    Column("current_stage", Integer, nullable=False, server_default=text("0")),
    Column("guard_alarms", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("rollback_on_alarm", Boolean, nullable=False, server_default=text("false")),
    Column("insufficient_data", Text, nullable=False, server_default=text("'wait'::text")),
    Column("value_before", JSONB, nullable=True),
    Column("halt_error_class", Text, nullable=True),
    Column("halt_reason", Text, nullable=True),
    Column("paused_remaining_seconds", Float, nullable=True),
    Column("created_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    CheckConstraint(_in("state", RAMP_STATES), name="state_valid"),
    CheckConstraint(
        "jsonb_typeof(stages) = 'array'"
        f" AND jsonb_array_length(stages) BETWEEN 1 AND {MAX_RAMP_STAGES}",
        name="stages_count",
    ),
    CheckConstraint("jsonb_typeof(end_updates) = 'object'", name="end_updates_is_object"),
    CheckConstraint(f"current_stage BETWEEN 0 AND {MAX_RAMP_STAGES}", name="current_stage_range"),
    CheckConstraint("cardinality(guard_alarms) <= 20", name="guard_alarms_count"),
    CheckConstraint(
        _in("insufficient_data", INSUFFICIENT_DATA_CHOICES), name="insufficient_data_valid"
    ),
    CheckConstraint("jsonb_typeof(value_before) = 'object'", name="value_before_is_object"),
    CheckConstraint(_in("halt_error_class", ERROR_CLASSES), name="halt_error_class_valid"),
    CheckConstraint(
        "state <> 'halted' OR halt_error_class IS NOT NULL", name="halted_has_error_class"
    ),
    CheckConstraint("char_length(halt_reason) <= 2000", name="halt_reason_length"),
    CheckConstraint(
        "paused_remaining_seconds IS NULL OR (state = 'paused' AND paused_remaining_seconds >= 0)",
        name="paused_remaining_only_if_paused",
    ),
    CheckConstraint("char_length(created_by) BETWEEN 1 AND 200", name="created_by_length"),
    *_in_range("starts_at", "created_at", "updated_at", "finished_at"),
    Index("ix_flag_ramps_flag_id", "flag_id"),
    # One unfinished ramp per flag (a halted ramp holds the flag until resumed or aborted).
    Index(
        "uq_flag_ramps_flag_id_unfinished",
        "flag_id",
        unique=True,
        postgresql_where=text("state IN ('active', 'paused', 'halted')"),
    ),
)

flag_ramp_events = Table(
    "flag_ramp_events",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column(
        "ramp_id",
        UUID(as_uuid=True),
        ForeignKey("flag_ramps.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("action", Text, nullable=False),
    Column("stage", Integer, nullable=True),
    Column("actor", Text, nullable=False),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    CheckConstraint(_in("action", RAMP_ACTIONS), name="action_valid"),
    CheckConstraint(f"stage BETWEEN 0 AND {MAX_RAMP_STAGES}", name="stage_range"),
    CheckConstraint("char_length(actor) BETWEEN 1 AND 200", name="actor_length"),
    CheckConstraint("jsonb_typeof(detail) = 'object'", name="detail_is_object"),
    *_in_range("at"),
    Index("ix_flag_ramp_events_ramp_id_id", "ramp_id", "id"),
)
