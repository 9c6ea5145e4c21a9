"""flag_ramps: gradual rollouts whose stages are ordinary schedules linked to their ramp

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

The contract (docs/design.md, "Gradual rollouts"; who writes what):

`flag_ramps` — one row per ramp of one flag.
- `stages` jsonb: an array of 1..20 `{"updates": {...}, "hold_seconds": int}`; stage k is
  `stages[k]` (0-based everywhere: `current_stage`, `ramp_stage`, events, alerts).
  `end_updates` (optional) is applied `hold_seconds` of the last stage after the last stage
  was applied; it is then stage `len(stages)`.
- `state`: `active` (the engine runs its stages), `paused`, `halted` (a stage failed for good,
  expired, or a guard alarm fired: `halt_error_class` and `halt_reason` say why), `completed`,
  `aborted`. `current_stage`: the stage whose schedule is live or was last applied.
- `guard_alarms`: CloudWatch alarm names read before each stage is applied;
  `rollback_on_alarm`: on ALARM also schedule the flag back to `value_before`;
  `insufficient_data`: `wait` (the stage stays due, no attempt is charged) or `halt`.
- `value_before` jsonb: the flag's fields (`enabled`, `rollout_percentage`) just before stage 0
  was applied; written by the engine when it applies stage 0, read by abort --rollback and by
  the guard-alarm rollback. NULL until stage 0 applies.
- `paused_remaining_seconds`: the rest of the pending stage's hold when the ramp was paused.
- `created_by`, `created_at`, `updated_at`, `finished_at` (set on completed/aborted/halted).

Writers: the operator side (store/ramps.py) inserts the ramp (`active`, `current_stage` 0)
together with stage 0's schedule (`pending`, `scheduled_at` = start) and a `created` event.
Pause cancels the live stage schedule and stores the remaining hold; resume inserts a new
schedule for `current_stage` due after it (a cancelled row does not count towards the unique
index below); resuming a halted ramp requeues its failed stage; abort cancels the live stage.
The engine, in the transaction that applies stage k, inserts stage k+1's schedule (due
`hold_seconds` of stage k after the actual application) and moves `current_stage`, or marks the
ramp `completed`; when a stage fails for good or expires, it marks the ramp `halted`. Lock
order for both sides: the stage's schedule row, then the ramp row.

`flag_ramp_events` — the ramp's history: (`ramp_id`, `at`, `action`, `stage`, `actor`,
`detail`); the engine writes actor `scheduler`.

`feature_flag_schedules.ramp_id` / `ramp_stage`: set together on a ramp's stage schedules,
NULL on plain ones. At most one live (pending or waiting for a retry) schedule per ramp, and
each stage at most once among rows that are not cancelled (two partial unique indexes), so a
crash or a race can neither skip nor duplicate a stage.

Also adds the error class `guard_alarm` to the schedule and history CHECK lists.

Downgrade drops the ramps, and refuses while any is unfinished (active, paused or halted):
below this revision its stage would become a lone plain change — applied, or requeued by a
bulk retry, with no successor ever — so the operator aborts those ramps first (with or
without rollback: the choice of the flag's value is theirs). A finished ramp has no live
stage, so every schedule stays as it is, unlinked. A `guard_alarm` error class becomes
`unknown`, a permanent failure still.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported: a migration creates what it created the day it was written.
OLD_ERROR_CLASSES = (
    "invalid_updates",
    "flag_missing",
    "data_error",
    "integrity_error",
    "serialization_failure",
    "deadlock",
    "lock_timeout",
    "statement_timeout",
    "connection_lost",
    "expired",
    "unknown",
    "unrecordable",
)
NEW_ERROR_CLASSES = (*OLD_ERROR_CLASSES, "guard_alarm")
RAMP_STATES = ("active", "paused", "halted", "completed", "aborted")
RAMP_ACTIONS = (
    "created",
    "stage_applied",
    "halted",
    "completed",
    "paused",
    "resumed",
    "aborted",
    "rolled_back",
)
MAX_STAGES = 20
SCHEDULES = "feature_flag_schedules"
ATTEMPTS = "feature_flag_schedule_attempts"
REAL_MOMENT = "{0} >= '0001-01-02 00:00:00+00' AND {0} < '9999-12-31 00:00:00+00'"


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _replace_check(table: str, name: str, condition: str) -> None:
    op.drop_constraint(op.f(f"ck_{table}_{name}"), table, type_="check")
    op.create_check_constraint(op.f(f"ck_{table}_{name}"), table, condition)


def _moment(table: str, column: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(
        REAL_MOMENT.format(column), name=op.f(f"ck_{table}_{column}_in_range")
    )


def _now() -> sa.TextClause:
    return sa.text("now()")


def _create_ramps() -> None:
    table = "flag_ramps"
    op.create_table(
        table,
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("flag_id", sa.Uuid(), nullable=False),
        sa.Column("state", sa.Text(), server_default=sa.text("'active'::text"), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stages", postgresql.JSONB(), nullable=False),
        sa.Column("end_updates", postgresql.JSONB(), nullable=True),
        sa.Column("current_stage", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "guard_alarms",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'::text[]"),
            nullable=False,
        ),
        sa.Column(
            "rollback_on_alarm", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column(
            "insufficient_data", sa.Text(), server_default=sa.text("'wait'::text"), nullable=False
        ),
        sa.Column("value_before", postgresql.JSONB(), nullable=True),
        sa.Column("halt_error_class", sa.Text(), nullable=True),
        sa.Column("halt_reason", sa.Text(), nullable=True),
        sa.Column("paused_remaining_seconds", sa.Float(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(_in("state", RAMP_STATES), name=op.f(f"ck_{table}_state_valid")),
        sa.CheckConstraint(
            "jsonb_typeof(stages) = 'array'"
            f" AND jsonb_array_length(stages) BETWEEN 1 AND {MAX_STAGES}",
            name=op.f(f"ck_{table}_stages_count"),
        ),
        sa.CheckConstraint(
            "jsonb_typeof(end_updates) = 'object'", name=op.f(f"ck_{table}_end_updates_is_object")
        ),
        sa.CheckConstraint(
            f"current_stage BETWEEN 0 AND {MAX_STAGES}",
            name=op.f(f"ck_{table}_current_stage_range"),
        ),
        sa.CheckConstraint(
            "cardinality(guard_alarms) <= 20", name=op.f(f"ck_{table}_guard_alarms_count")
        ),
        sa.CheckConstraint(
            _in("insufficient_data", ("wait", "halt")),
            name=op.f(f"ck_{table}_insufficient_data_valid"),
        ),
        sa.CheckConstraint(
            "jsonb_typeof(value_before) = 'object'",
            name=op.f(f"ck_{table}_value_before_is_object"),
        ),
        sa.CheckConstraint(
            _in("halt_error_class", NEW_ERROR_CLASSES),
            name=op.f(f"ck_{table}_halt_error_class_valid"),
        ),
        sa.CheckConstraint(
            "state <> 'halted' OR halt_error_class IS NOT NULL",
            name=op.f(f"ck_{table}_halted_has_error_class"),
        ),
        sa.CheckConstraint(
            "char_length(halt_reason) <= 2000", name=op.f(f"ck_{table}_halt_reason_length")
        ),
        sa.CheckConstraint(
            "paused_remaining_seconds IS NULL OR (state = 'paused'"
            " AND paused_remaining_seconds >= 0)",
            name=op.f(f"ck_{table}_paused_remaining_only_if_paused"),
        ),
        sa.CheckConstraint(
            "char_length(created_by) BETWEEN 1 AND 200", name=op.f(f"ck_{table}_created_by_length")
        ),
        *(
            _moment(table, column)
            for column in ("starts_at", "created_at", "updated_at", "finished_at")
        ),
        sa.ForeignKeyConstraint(
            ["flag_id"],
            ["feature_flags.id"],
            name=op.f(f"fk_{table}_flag_id_feature_flags"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
    )
    op.create_index(op.f(f"ix_{table}_flag_id"), table, ["flag_id"])
    # One ramp at a time per flag: a second one must wait until the first is completed or
    # aborted (a halted ramp still holds the flag until an operator resumes or aborts it).
    op.create_index(
        op.f(f"uq_{table}_flag_id_unfinished"),
        table,
        ["flag_id"],
        unique=True,
        postgresql_where=sa.text("state IN ('active', 'paused', 'halted')"),
    )


def _create_events() -> None:
    table = "flag_ramp_events"
    op.create_table(
        table,
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("ramp_id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column(
            "detail", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.CheckConstraint(_in("action", RAMP_ACTIONS), name=op.f(f"ck_{table}_action_valid")),
        sa.CheckConstraint(
            f"stage BETWEEN 0 AND {MAX_STAGES}", name=op.f(f"ck_{table}_stage_range")
        ),
        sa.CheckConstraint(
            "char_length(actor) BETWEEN 1 AND 200", name=op.f(f"ck_{table}_actor_length")
        ),
        sa.CheckConstraint(
            "jsonb_typeof(detail) = 'object'", name=op.f(f"ck_{table}_detail_is_object")
        ),
        _moment(table, "at"),
        sa.ForeignKeyConstraint(
            ["ramp_id"],
            ["flag_ramps.id"],
            name=op.f(f"fk_{table}_ramp_id_flag_ramps"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
    )
    op.create_index(op.f(f"ix_{table}_ramp_id_id"), table, ["ramp_id", "id"])


def _link_schedules() -> None:
    op.add_column(SCHEDULES, sa.Column("ramp_id", sa.Uuid(), nullable=True))
    op.add_column(SCHEDULES, sa.Column("ramp_stage", sa.Integer(), nullable=True))
    op.create_foreign_key(
        op.f(f"fk_{SCHEDULES}_ramp_id_flag_ramps"),
        SCHEDULES,
        "flag_ramps",
        ["ramp_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_check_constraint(
        op.f(f"ck_{SCHEDULES}_ramp_stage_iff_ramp_id"),
        SCHEDULES,
        f"(ramp_id IS NULL) = (ramp_stage IS NULL) AND ramp_stage BETWEEN 0 AND {MAX_STAGES}",
    )
    # At most one live stage per ramp: pending, or failed and waiting for a retry.
    op.create_index(
        op.f(f"uq_{SCHEDULES}_ramp_id_live"),
        SCHEDULES,
        ["ramp_id"],
        unique=True,
        postgresql_where=sa.text(
            "ramp_id IS NOT NULL AND (status = 'pending' OR next_retry_at IS NOT NULL)"
        ),
    )
    # Each stage once; a paused ramp's cancelled stage may be created again on resume.
    op.create_index(
        op.f(f"uq_{SCHEDULES}_ramp_id_ramp_stage"),
        SCHEDULES,
        ["ramp_id", "ramp_stage"],
        unique=True,
        postgresql_where=sa.text("ramp_id IS NOT NULL AND status <> 'cancelled'"),
    )
    # A ramp's stage schedules, cancelled ones included (show, resume, the ON DELETE cascade).
    op.create_index(
        op.f(f"ix_{SCHEDULES}_ramp_id_ramp_stage"),
        SCHEDULES,
        ["ramp_id", "ramp_stage"],
        postgresql_where=sa.text("ramp_id IS NOT NULL"),
    )


def upgrade() -> None:
    _replace_check(SCHEDULES, "last_error_class_valid", _in("last_error_class", NEW_ERROR_CLASSES))
    _replace_check(ATTEMPTS, "error_class_valid", _in("error_class", NEW_ERROR_CLASSES))
    _create_ramps()
    _create_events()
    _link_schedules()


# In SQL, so `alembic downgrade --sql` carries the check too.
REFUSE_UNFINISHED_RAMPS = """
DO $$
DECLARE
    unfinished bigint;
BEGIN
    SELECT count(*) INTO unfinished FROM flag_ramps WHERE state IN ('active', 'paused', 'halted');
    IF unfinished > 0 THEN
        RAISE EXCEPTION USING
            MESSAGE = unfinished || ' ramp(s) unfinished (active, paused or halted); below'
                || ' revision 0010 their stages would apply alone, with no next stage',
            HINT = 'abort them first: flag-scheduler ramps list --state active --state paused'
                || ' --state halted, then flag-scheduler ramps abort ID [--rollback]';
    END IF;
END $$
"""


def downgrade() -> None:
    op.execute(REFUSE_UNFINISHED_RAMPS)
    op.drop_index(op.f(f"ix_{SCHEDULES}_ramp_id_ramp_stage"), table_name=SCHEDULES)
    op.drop_index(op.f(f"uq_{SCHEDULES}_ramp_id_ramp_stage"), table_name=SCHEDULES)
    op.drop_index(op.f(f"uq_{SCHEDULES}_ramp_id_live"), table_name=SCHEDULES)
    op.drop_constraint(op.f(f"ck_{SCHEDULES}_ramp_stage_iff_ramp_id"), SCHEDULES, type_="check")
    op.drop_constraint(op.f(f"fk_{SCHEDULES}_ramp_id_flag_ramps"), SCHEDULES, type_="foreignkey")
    op.drop_column(SCHEDULES, "ramp_stage")
    op.drop_column(SCHEDULES, "ramp_id")
    op.drop_table("flag_ramp_events")
    op.drop_table("flag_ramps")
    # A guard-alarm failure stays a permanent failure, of a class the old schema knows.
    op.execute(
        "UPDATE feature_flag_schedule_attempts SET error_class = 'unknown'"
        " WHERE error_class = 'guard_alarm'"
    )
    op.execute(
        "UPDATE feature_flag_schedules SET last_error_class = 'unknown'"
        " WHERE last_error_class = 'guard_alarm'"
    )
    _replace_check(ATTEMPTS, "error_class_valid", _in("error_class", OLD_ERROR_CLASSES))
    _replace_check(SCHEDULES, "last_error_class_valid", _in("last_error_class", OLD_ERROR_CLASSES))
