"""Every SQL statement the scheduler runs, as named constants with %(name)s parameters."""

# Bounds waits for this transaction only; set_config(..., true) is SET LOCAL that takes
# parameters, and it works behind RDS Proxy, which rejects the `options` startup parameter.
SET_TRANSACTION_TIMEOUTS = """
SELECT set_config('lock_timeout', %(lock_timeout)s, true),
       set_config('statement_timeout', %(statement_timeout)s, true),
       set_config('idle_in_transaction_session_timeout', %(idle_timeout)s, true)
"""

# Claims up to `limit` due schedules, oldest due first; rows another run holds are skipped.
# An `updates` document over the size limit is not even fetched: only its size is.
# `due_at` is a generated column (pending: scheduled_at, failed: next_retry_at) with a
# partial index, so this stays an index scan however many finished rows the table holds.
CLAIM_DUE_SCHEDULES = """
SELECT s.id, s.flag_id, f.flag_key, f.environment, s.scheduled_at, s.status,
       CASE WHEN octet_length(s.updates::text) <= %(max_updates_bytes)s THEN s.updates END,
       s.retry_count, s.max_retries, s.requeued_at, octet_length(s.updates::text)
FROM feature_flag_schedules AS s
JOIN feature_flags AS f ON f.id = s.flag_id
WHERE s.due_at <= %(now)s
ORDER BY s.due_at
LIMIT %(limit)s
FOR UPDATE OF s SKIP LOCKED
"""

# Locks one flag row until the transaction ends; NO KEY UPDATE so writers inserting new
# schedules for the flag (a foreign-key KEY SHARE lock) are not blocked.
LOCK_FLAG = """
SELECT id, flag_key, environment, enabled, rollout_percentage
FROM feature_flags
WHERE id = %(flag_id)s
FOR NO KEY UPDATE
"""

# Which fields an applied schedule scheduled after this one has already set on the flag.
FIELDS_SET_BY_LATER_SCHEDULES = """
SELECT coalesce(bool_or(updates ? 'enabled'), false),
       coalesce(bool_or(updates ? 'rollout_percentage'), false)
FROM feature_flag_schedules
WHERE flag_id = %(flag_id)s
  AND status = 'applied'
  AND (scheduled_at, id) > (%(scheduled_at)s, %(schedule_id)s)
"""

# Sets the given fields of a flag (NULL leaves a field as it is) and returns the new state.
UPDATE_FLAG = """
UPDATE feature_flags
SET enabled = coalesce(%(enabled)s::boolean, enabled),
    rollout_percentage = coalesce(%(rollout_percentage)s::integer, rollout_percentage),
    updated_at = %(now)s
WHERE id = %(flag_id)s
RETURNING id, flag_key, environment, enabled, rollout_percentage
"""

# Records a successful application; retry_count stays so history shows it needed retries.
MARK_APPLIED = """
UPDATE feature_flag_schedules
SET status = 'applied', applied_at = %(now)s, next_retry_at = NULL, last_error = NULL,
    last_error_class = NULL, updated_at = %(now)s
WHERE id = %(schedule_id)s
"""

# Records that later-scheduled changes already set every field this schedule would set.
MARK_SUPERSEDED = """
UPDATE feature_flag_schedules
SET status = 'superseded', next_retry_at = NULL, last_error = NULL, last_error_class = NULL,
    updated_at = %(now)s
WHERE id = %(schedule_id)s
"""

# Records a retryable failure and when the next attempt is due.
MARK_RETRY_SCHEDULED = """
UPDATE feature_flag_schedules
SET status = 'failed', retry_count = %(retry_count)s, next_retry_at = %(next_retry_at)s,
    last_error = %(last_error)s, last_error_class = %(error_class)s, updated_at = %(now)s
WHERE id = %(schedule_id)s
"""

# Records a failure that will not be retried automatically.
MARK_FAILED_PERMANENTLY = """
UPDATE feature_flag_schedules
SET status = 'failed', next_retry_at = NULL, last_error = %(last_error)s,
    last_error_class = %(error_class)s, updated_at = %(now)s
WHERE id = %(schedule_id)s
"""

# Appends one row to a schedule's history, in the transaction of the outcome it records.
INSERT_ATTEMPT = """
INSERT INTO feature_flag_schedule_attempts
    (schedule_id, attempt, started_at, finished_at, outcome, error_class, error, request_id)
VALUES (%(schedule_id)s, %(attempt)s, %(started_at)s, %(finished_at)s, %(outcome)s,
        %(error_class)s, %(error)s, %(request_id)s)
"""

# Remembers the last successful run (one row), for `flag-scheduler status`.
SAVE_RUN_STATE = """
INSERT INTO scheduler_run_state
    (id, last_run_started_at, last_run_finished_at, last_request_id, last_summary)
VALUES (1, %(started_at)s, %(finished_at)s, %(request_id)s, %(summary)s)
ON CONFLICT (id) DO UPDATE SET
    last_run_started_at = EXCLUDED.last_run_started_at,
    last_run_finished_at = EXCLUDED.last_run_finished_at,
    last_request_id = EXCLUDED.last_request_id,
    last_summary = EXCLUDED.last_summary
"""

# Counts schedules waiting for a retry.
COUNT_RETRY_BACKLOG = """
SELECT count(*)
FROM feature_flag_schedules
WHERE status = 'failed' AND next_retry_at IS NOT NULL
"""

# Cheap liveness check of a cached connection.
PING = "SELECT 1"

# --- Writer side: what the CLI and the demo do as a user of the contract tables. ---

# Creates a flag and returns its id.
INSERT_FLAG = """
INSERT INTO feature_flags (flag_key, environment, enabled, rollout_percentage, description)
VALUES (%(flag_key)s, %(environment)s, %(enabled)s, %(rollout_percentage)s, %(description)s)
RETURNING id
"""

# Creates a pending schedule and returns its id.
INSERT_SCHEDULE = """
INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates, max_retries)
VALUES (%(flag_id)s, %(scheduled_at)s, %(updates)s, %(max_retries)s)
RETURNING id
"""

# Schedules with their flag's identity, filtered; NULL filters match everything.
LIST_SCHEDULES = """
SELECT s.id, f.flag_key, f.environment, s.scheduled_at, s.status, s.updates, s.applied_at,
       s.retry_count, s.max_retries, s.next_retry_at, s.last_error, s.last_error_class,
       s.requeued_at
FROM feature_flag_schedules AS s
JOIN feature_flags AS f ON f.id = s.flag_id
WHERE (%(statuses)s::text[] IS NULL OR s.status = ANY(%(statuses)s::text[]))
  AND (%(flag_key)s::text IS NULL OR f.flag_key = %(flag_key)s::text)
  AND (%(environment)s::text IS NULL OR f.environment = %(environment)s::text)
  AND (%(due_at)s::timestamptz IS NULL OR s.due_at <= %(due_at)s::timestamptz)
ORDER BY s.scheduled_at, f.flag_key, s.id
LIMIT %(limit)s
"""

# One schedule with its flag's identity.
GET_SCHEDULE = """
SELECT s.id, f.flag_key, f.environment, s.scheduled_at, s.status, s.updates, s.applied_at,
       s.retry_count, s.max_retries, s.next_retry_at, s.last_error, s.last_error_class,
       s.requeued_at
FROM feature_flag_schedules AS s
JOIN feature_flags AS f ON f.id = s.flag_id
WHERE s.id = %(schedule_id)s
"""

# A schedule's history, oldest first.
SCHEDULE_HISTORY = """
SELECT attempt, started_at, finished_at, outcome, error_class, error, request_id
FROM feature_flag_schedule_attempts
WHERE schedule_id = %(schedule_id)s
ORDER BY id
"""

# Every flag's current state, optionally one environment.
LIST_FLAGS = """
SELECT id, flag_key, environment, enabled, rollout_percentage, description, updated_at
FROM feature_flags
WHERE %(environment)s::text IS NULL OR environment = %(environment)s::text
ORDER BY flag_key, environment
"""

# One flag by key and environment.
GET_FLAG = """
SELECT id, flag_key, environment, enabled, rollout_percentage, description, updated_at
FROM feature_flags
WHERE flag_key = %(flag_key)s AND environment = %(environment)s
"""

# Requeues a permanently failed schedule by hand: due now, retries counted afresh, and a
# fresh lateness window from now. Matches nothing in any other state.
REQUEUE_SCHEDULE = """
UPDATE feature_flag_schedules
SET status = 'pending', retry_count = 0, next_retry_at = NULL, last_error = NULL,
    last_error_class = NULL, requeued_at = %(now)s, updated_at = %(now)s
WHERE id = %(schedule_id)s AND status = 'failed' AND next_retry_at IS NULL
RETURNING id
"""

# Cancels a pending or waiting-for-retry schedule. A run holding the row makes this wait
# for its commit, then re-check the state it left, so an applied schedule is never cancelled.
CANCEL_SCHEDULE = """
UPDATE feature_flag_schedules
SET status = 'cancelled', next_retry_at = NULL, updated_at = %(now)s
WHERE id = %(schedule_id)s
  AND (status = 'pending' OR (status = 'failed' AND next_retry_at IS NOT NULL))
RETURNING id
"""

# The health at a glance, as of %(now)s.
STATUS_COUNTS = """
SELECT
    (SELECT count(*) FROM feature_flag_schedules WHERE due_at <= %(now)s),
    (SELECT min(due_at) FROM feature_flag_schedules WHERE due_at <= %(now)s),
    (SELECT count(*) FROM feature_flag_schedules
     WHERE status = 'failed' AND next_retry_at IS NOT NULL),
    (SELECT min(next_retry_at) FROM feature_flag_schedules
     WHERE status = 'failed' AND next_retry_at IS NOT NULL),
    (SELECT count(*) FROM feature_flag_schedules
     WHERE status = 'pending' AND scheduled_at > %(now)s),
    (SELECT count(*) FROM feature_flag_schedule_attempts
     WHERE outcome IN ('failed_permanently', 'expired')
       AND finished_at > %(now)s - interval '24 hours')
"""

# The last successful run, if any.
GET_RUN_STATE = """
SELECT last_run_started_at, last_run_finished_at, last_request_id, last_summary
FROM scheduler_run_state
WHERE id = 1
"""
