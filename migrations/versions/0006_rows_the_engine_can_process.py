"""every row is one the engine can process and record

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

Adds the checks that make the schema refuse rows the scheduler cannot process or record:

- retry_count 0..10. retry_count grows only while it is below the schedule's limit
  (max_retries, or FLAG_SCHEDULE_MAX_RETRIES; both at most 10) and a requeue resets it to 0,
  so 10 is the most the engine itself ever writes. A larger value can only come from a
  writer; 2147483647 made `attempt = retry_count + 1` overflow the history's integer, the
  outcome could not be written and the row blocked the queue. No headroom: a value above
  10 is a writer's bug, better refused at its insert than found by a run.
- Every timestamp column of every table within 0001-01-02 .. 9999-12-31 (as 0005 did for
  scheduled_at): infinity, -infinity and years outside 1..9999 are valid timestamptz values
  that no client library can load, so one such row failed every run and `status`.
- Status consistency, as the engine and the CLI write them (sql.WRITE_OUTCOMES,
  REQUEUE_SCHEDULE, CANCEL_SCHEDULE): applied_at is set exactly on applied rows, and
  next_retry_at only on failed rows (set: waiting for a retry; NULL: permanently failed).
- last_error at most 2000 characters, like the history's error (the engine writes 1,000
  plus the class).
- The error class `unrecordable` for a row parked by the scheduler (or by this migration)
  because it holds a value the run cannot process or record; its history row has no
  attempt number, since that number may be what cannot be represented.

Rows already in the database (production data) are repaired first, in this revision's
transaction, under an exclusive lock of the four tables so no writer adds a bad row between
the repair and the checks; the checks are then added validated. (NOT VALID + VALIDATE would
buy nothing here: Alembic runs the revision in one transaction, so the locks are held to the
commit anyway; repairing first makes the validation certain.) The repair:

- A live schedule (pending, or failed with a retry due) that the engine cannot process -
  retry_count outside 0..10, or an unloadable scheduled_at, requeued_at or next_retry_at -
  is parked: failed, no retry, last_error_class `unrecordable`, last_error naming the
  value, and a history row. An operator sees it as permanently failed and can requeue it.
- Then every row: retry_count above 10 becomes 10; an unloadable applied_at, requeued_at or
  next_retry_at becomes NULL (an applied row's applied_at becomes its updated_at, or now);
  an unloadable created_at, updated_at or history time becomes now; applied_at on a row not
  applied and next_retry_at on a row not failed are cleared (the engine overwrites both
  whenever it writes an outcome, so they carried no meaning); an applied row without
  applied_at gets its updated_at; a longer last_error is cut to 2000 characters; an
  unloadable run state row is deleted (it is only the last run's summary).

Downgrade keeps the parked rows (as `unknown` failures; their history rows get attempt 0)
and drops the new checks.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EARLIEST = "'0001-01-02 00:00:00+00'"
LATEST = "'9999-12-31 00:00:00+00'"

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
)
NEW_ERROR_CLASSES = (*OLD_ERROR_CLASSES, "unrecordable")

SCHEDULES = "feature_flag_schedules"
ATTEMPTS = "feature_flag_schedule_attempts"
# Timestamp columns of each table: (table, column).
MOMENTS = (
    ("feature_flags", "created_at"),
    ("feature_flags", "updated_at"),
    (SCHEDULES, "applied_at"),
    (SCHEDULES, "next_retry_at"),
    (SCHEDULES, "created_at"),
    (SCHEDULES, "updated_at"),
    (SCHEDULES, "requeued_at"),
    (ATTEMPTS, "started_at"),
    (ATTEMPTS, "finished_at"),
    ("scheduler_run_state", "last_run_started_at"),
    ("scheduler_run_state", "last_run_finished_at"),
)
# Checks on feature_flag_schedules besides the moments: name -> condition.
SCHEDULE_CHECKS = {
    "retry_count_range": "retry_count BETWEEN 0 AND 10",
    "applied_at_iff_applied": "(status = 'applied') = (applied_at IS NOT NULL)",
    "next_retry_at_only_if_failed": "next_retry_at IS NULL OR status = 'failed'",
    "last_error_length": "char_length(last_error) <= 2000",
}
OLD_ATTEMPT_CHECK = "(attempt IS NULL) = (outcome IN ('requeued', 'cancelled'))"
NEW_ATTEMPT_CHECK = (
    "(attempt IS NULL) = (outcome IN ('requeued', 'cancelled')"
    " OR coalesce(error_class = 'unrecordable', false))"
)


def _in_range(column: str) -> str:
    return f"{column} >= {EARLIEST} AND {column} < {LATEST}"


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _replace_check(table: str, name: str, condition: str) -> None:
    op.drop_constraint(op.f(f"ck_{table}_{name}"), table, type_="check")
    op.create_check_constraint(op.f(f"ck_{table}_{name}"), table, condition)


# Whether a moment is one every client can load (NULL stays NULL); for this session only.
CREATE_LOADABLE = """
CREATE FUNCTION pg_temp.loadable(moment timestamptz) RETURNS boolean
LANGUAGE sql IMMUTABLE AS
$$ SELECT moment >= '0001-01-02 00:00:00+00' AND moment < '9999-12-31 00:00:00+00' $$
"""

# Parks the live schedules no run can process, with a history row saying why (the reason
# names the offending values, so an operator sees what to fix before a requeue).
PARK_LIVE_DEFECTS = """
WITH defects AS (
    SELECT id, concat_ws('; ',
        CASE WHEN retry_count NOT BETWEEN 0 AND 10
             THEN format('retry_count %s is outside 0..10', retry_count) END,
        CASE WHEN NOT pg_temp.loadable(scheduled_at)
             THEN format('scheduled_at %s is not a representable moment', scheduled_at) END,
        CASE WHEN NOT pg_temp.loadable(requeued_at)
             THEN format('requeued_at %s is not a representable moment', requeued_at) END,
        CASE WHEN NOT pg_temp.loadable(next_retry_at)
             THEN format('next_retry_at %s is not a representable moment', next_retry_at) END
    ) AS reason
    FROM feature_flag_schedules
    WHERE (status = 'pending' OR (status = 'failed' AND next_retry_at IS NOT NULL))
      AND (retry_count NOT BETWEEN 0 AND 10
           OR NOT pg_temp.loadable(scheduled_at)
           OR NOT pg_temp.loadable(requeued_at)
           OR NOT pg_temp.loadable(next_retry_at))
), parked AS (
    UPDATE feature_flag_schedules AS s
    SET status = 'failed', next_retry_at = NULL,
        last_error = 'unrecordable: parked by migration 0006: ' || d.reason,
        last_error_class = 'unrecordable', updated_at = now()
    FROM defects AS d
    WHERE s.id = d.id
    RETURNING s.id, d.reason
)
INSERT INTO feature_flag_schedule_attempts
    (schedule_id, attempt, started_at, finished_at, outcome, error_class, error, request_id)
SELECT id, NULL, now(), now(), 'failed_permanently', 'unrecordable',
       left('parked by migration 0006: ' || reason, 2000), 'migration 0006'
FROM parked
"""

# Repairs every remaining value the new checks refuse (see the module docstring).
REPAIR_SCHEDULES = """
UPDATE feature_flag_schedules
SET retry_count = least(greatest(retry_count, 0), 10),
    requeued_at = CASE WHEN NOT pg_temp.loadable(requeued_at) THEN NULL ELSE requeued_at END,
    next_retry_at = CASE WHEN status <> 'failed' OR NOT pg_temp.loadable(next_retry_at)
                         THEN NULL ELSE next_retry_at END,
    created_at = CASE WHEN NOT pg_temp.loadable(created_at) THEN now() ELSE created_at END,
    updated_at = CASE WHEN NOT pg_temp.loadable(updated_at) THEN now() ELSE updated_at END,
    applied_at = CASE
        WHEN status <> 'applied' THEN NULL
        WHEN pg_temp.loadable(applied_at) THEN applied_at
        WHEN pg_temp.loadable(updated_at) THEN updated_at
        ELSE now() END,
    last_error = left(last_error, 2000)
WHERE retry_count NOT BETWEEN 0 AND 10
   OR NOT pg_temp.loadable(requeued_at)
   OR NOT pg_temp.loadable(next_retry_at)
   OR NOT pg_temp.loadable(created_at)
   OR NOT pg_temp.loadable(updated_at)
   OR NOT pg_temp.loadable(applied_at)
   OR (status <> 'failed' AND next_retry_at IS NOT NULL)
   OR (status = 'applied') <> (applied_at IS NOT NULL)
   OR char_length(last_error) > 2000
"""

# Unloadable flag times become the migration's time.
REPAIR_FLAGS = """
UPDATE feature_flags
SET created_at = CASE WHEN NOT pg_temp.loadable(created_at) THEN now() ELSE created_at END,
    updated_at = CASE WHEN NOT pg_temp.loadable(updated_at) THEN now() ELSE updated_at END
WHERE NOT pg_temp.loadable(created_at)
   OR NOT pg_temp.loadable(updated_at)
"""

# Unloadable history times become the migration's time.
REPAIR_ATTEMPTS = """
UPDATE feature_flag_schedule_attempts
SET started_at = CASE WHEN NOT pg_temp.loadable(started_at) THEN now() ELSE started_at END,
    finished_at = CASE WHEN NOT pg_temp.loadable(finished_at) THEN now() ELSE finished_at END
WHERE NOT pg_temp.loadable(started_at)
   OR NOT pg_temp.loadable(finished_at)
"""

# The run state is only the last run's summary: an unloadable one is dropped.
REPAIR_RUN_STATE = """
DELETE FROM scheduler_run_state
WHERE NOT pg_temp.loadable(last_run_started_at)
   OR NOT pg_temp.loadable(last_run_finished_at)
"""


def upgrade() -> None:
    op.execute(
        "LOCK TABLE feature_flags, feature_flag_schedules, feature_flag_schedule_attempts,"
        " scheduler_run_state IN ACCESS EXCLUSIVE MODE"
    )
    # The new class and the attempt-less history row first: the repair writes both.
    _replace_check(SCHEDULES, "last_error_class_valid", _in("last_error_class", NEW_ERROR_CLASSES))
    _replace_check(ATTEMPTS, "error_class_valid", _in("error_class", NEW_ERROR_CLASSES))
    _replace_check(ATTEMPTS, "attempt_iff_attempted", NEW_ATTEMPT_CHECK)
    op.execute(CREATE_LOADABLE)
    op.execute(PARK_LIVE_DEFECTS)
    for statement in (REPAIR_SCHEDULES, REPAIR_FLAGS, REPAIR_ATTEMPTS, REPAIR_RUN_STATE):
        op.execute(statement)
    op.execute("DROP FUNCTION pg_temp.loadable(timestamptz)")

    op.drop_constraint(
        op.f("ck_feature_flag_schedules_retry_count_non_negative"), SCHEDULES, type_="check"
    )
    for name, condition in SCHEDULE_CHECKS.items():
        op.create_check_constraint(op.f(f"ck_{SCHEDULES}_{name}"), SCHEDULES, condition)
    for table, column in MOMENTS:
        op.create_check_constraint(op.f(f"ck_{table}_{column}_in_range"), table, _in_range(column))


def downgrade() -> None:
    for table, column in MOMENTS:
        op.drop_constraint(op.f(f"ck_{table}_{column}_in_range"), table, type_="check")
    for name in SCHEDULE_CHECKS:
        op.drop_constraint(op.f(f"ck_{SCHEDULES}_{name}"), SCHEDULES, type_="check")
    op.create_check_constraint(
        op.f("ck_feature_flag_schedules_retry_count_non_negative"), SCHEDULES, "retry_count >= 0"
    )
    # Parked rows stay, as failures of the class the old schema knows.
    op.execute(
        "UPDATE feature_flag_schedule_attempts SET attempt = coalesce(attempt, 0),"
        " error_class = 'unknown' WHERE error_class = 'unrecordable'"
    )
    op.execute(
        "UPDATE feature_flag_schedules SET last_error_class = 'unknown'"
        " WHERE last_error_class = 'unrecordable'"
    )
    _replace_check(ATTEMPTS, "attempt_iff_attempted", OLD_ATTEMPT_CHECK)
    _replace_check(ATTEMPTS, "error_class_valid", _in("error_class", OLD_ERROR_CLASSES))
    _replace_check(SCHEDULES, "last_error_class_valid", _in("last_error_class", OLD_ERROR_CLASSES))
