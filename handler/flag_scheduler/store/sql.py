"""Every SQL statement the scheduler runs, as named constants with %(name)s parameters."""

# Bounds waits for this transaction only; set_config(..., true) is SET LOCAL that takes
# parameters, and it works behind RDS Proxy, which rejects the `options` startup parameter.
SET_TRANSACTION_TIMEOUTS = """
SELECT set_config('lock_timeout', %(lock_timeout)s, true),
       set_config('statement_timeout', %(statement_timeout)s, true),
       set_config('idle_in_transaction_session_timeout', %(idle_timeout)s, true)
"""

# Claims up to `limit` due schedules, oldest due first; rows another run holds are skipped,
# and so are the ids in %(skip)s (rows this run already parked or could not record) and the
# flags in %(skip_flags)s (held past the lock timeout by a sibling run).
# `updates` comes as text, decoded per schedule (a document no decoder can read must fail
# its own schedule, not the claim); over the size limit it is not even fetched.
# A timestamp no client can load (infinity, year 10000) would fail the whole result: the
# claim returns a placeholder (scheduled_at: %(earliest)s) or NULL (requeued_at) for it
# instead, and `defect` says what is wrong with the row (NULL for every row the engine can
# process and record). Columns are named as models.DueSchedule's fields.
# KEY SHARE of the flag, skipping a flag row locked FOR UPDATE: a DELETE of the flag takes
# that lock, then its cascade waits for our schedule rows, so a run that waited for the
# flag would deadlock with it; taken here, at claim time, the DELETE waits for the run
# instead. KEY SHARE conflicts with nothing else (not with a run's or a writer's UPDATE).
# `due_at` is a generated column (pending: scheduled_at, failed: next_retry_at) with a
# partial index, so this stays an index scan however many finished rows the table holds.
CLAIM_DUE_SCHEDULES = """
SELECT s.id, s.flag_id, f.flag_key, f.environment,
       CASE WHEN s.scheduled_at >= %(earliest)s AND s.scheduled_at < %(latest)s
            THEN s.scheduled_at ELSE %(earliest)s END AS scheduled_at,
       CASE WHEN octet_length(s.updates::text) <= %(max_updates_bytes)s
            THEN s.updates::text END AS updates,
       s.retry_count, s.max_retries,
       CASE WHEN s.requeued_at >= %(earliest)s AND s.requeued_at < %(latest)s
            THEN s.requeued_at END AS requeued_at,
       octet_length(s.updates::text) AS updates_bytes,
       NULLIF(concat_ws('; ',
           CASE WHEN s.retry_count NOT BETWEEN 0 AND %(max_retry_count)s
                THEN format('retry_count %%s is outside 0..%%s', s.retry_count,
                            %(max_retry_count)s) END,
           CASE WHEN s.max_retries NOT BETWEEN 0 AND %(max_retry_count)s
                THEN format('max_retries %%s is outside 0..%%s', s.max_retries,
                            %(max_retry_count)s) END,
           CASE WHEN NOT (s.scheduled_at >= %(earliest)s AND s.scheduled_at < %(latest)s)
                THEN format('scheduled_at %%s is not a representable moment',
                            s.scheduled_at) END,
           CASE WHEN NOT (s.requeued_at >= %(earliest)s AND s.requeued_at < %(latest)s)
                THEN format('requeued_at %%s is not a representable moment',
                            s.requeued_at) END
       ), '') AS defect,
       s.ramp_id, s.ramp_stage
FROM feature_flag_schedules AS s
JOIN feature_flags AS f ON f.id = s.flag_id
WHERE s.due_at <= %(now)s AND s.id <> ALL(%(skip)s::uuid[])
  AND s.flag_id <> ALL(%(skip_flags)s::uuid[])
ORDER BY s.due_at
LIMIT %(limit)s
FOR UPDATE OF s SKIP LOCKED
FOR KEY SHARE OF f SKIP LOCKED
"""

# Locks the ramps of a batch's stages that no one else holds (an operator pausing or
# aborting one holds it: its stage waits); NO KEY UPDATE so stage schedules referencing the
# ramp can still be inserted. Taken after the stages' schedule rows: the lock order every
# writer of ramps keeps.
LOCK_RAMPS = """
SELECT id, flag_id, state, starts_at, stages, current_stage, created_by, end_updates,
       guard_alarms, rollback_on_alarm, insufficient_data, value_before, halt_error_class,
       halt_reason, paused_remaining_seconds, created_at, updated_at, finished_at
FROM flag_ramps
WHERE id = ANY(%(ids)s::uuid[])
ORDER BY id
FOR NO KEY UPDATE SKIP LOCKED
"""

# Moves each ramp on after a stage's outcome: its state, current stage, and (stage 0
# applied) the flag's value before the ramp: the flag as written now, with the fields the
# stage changed put back to what they were.
ADVANCE_RAMPS = """
UPDATE flag_ramps AS r
SET state = v.state, current_stage = v.current_stage,
    value_before = CASE WHEN v.value_before IS NULL THEN r.value_before
        ELSE jsonb_build_object('enabled', f.enabled,
                                'rollout_percentage', f.rollout_percentage)
             || v.value_before::jsonb END,
    halt_error_class = v.halt_error_class, halt_reason = v.halt_reason,
    finished_at = CASE WHEN v.state IN ('completed', 'halted') THEN %(now)s END,
    updated_at = %(now)s
FROM unnest(%(ids)s::uuid[], %(states)s::text[], %(current_stages)s::int[],
            %(value_before)s::text[], %(halt_error_classes)s::text[], %(halt_reasons)s::text[])
         AS v(id, state, current_stage, value_before, halt_error_class, halt_reason),
     feature_flags AS f
WHERE r.id = v.id AND f.id = r.flag_id AND r.state = 'active'
"""

# The schedules ramp steps create: next stages (ramp_id set) and rollbacks (plain).
INSERT_RAMP_SCHEDULES = """
INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates, ramp_id, ramp_stage)
SELECT v.flag_id, v.scheduled_at, v.updates::jsonb, v.ramp_id, v.ramp_stage
FROM unnest(%(flag_ids)s::uuid[], %(scheduled_at)s::timestamptz[], %(updates)s::text[],
            %(ramp_ids)s::uuid[], %(ramp_stages)s::int[])
         AS v(flag_id, scheduled_at, updates, ramp_id, ramp_stage)
"""

# Moves the next stages a batch created to a full hold after the batch's last clock
# reading before commit (only ever later than the time they were written with).
STAMP_NEXT_STAGES = """
UPDATE feature_flag_schedules AS s
SET scheduled_at = v.scheduled_at
FROM unnest(%(ramp_ids)s::uuid[], %(ramp_stages)s::int[], %(scheduled_at)s::timestamptz[])
         AS v(ramp_id, ramp_stage, scheduled_at)
WHERE s.ramp_id = v.ramp_id AND s.ramp_stage = v.ramp_stage AND s.status = 'pending'
  AND s.scheduled_at < v.scheduled_at
"""

# Rows of the ramps' history.
INSERT_RAMP_EVENTS = """
INSERT INTO flag_ramp_events (ramp_id, at, action, stage, actor, detail)
SELECT v.ramp_id, v.at, v.action, v.stage, v.actor, v.detail::jsonb
FROM unnest(%(ramp_ids)s::uuid[], %(at)s::timestamptz[], %(actions)s::text[],
            %(stages)s::int[], %(actors)s::text[], %(details)s::text[])
         AS v(ramp_id, at, action, stage, actor, detail)
"""

# Parks schedules the run cannot process or record: permanently failed (out of the queue,
# visible, requeueable), with a short reason (naming the bad values) and a history row. The
# history row carries no attempt number, since that number (retry_count + 1) may be the value
# that overflows. It also brings every checked value into range (the reason keeps the
# original; a requeue resets retry_count and requeued_at anyway), so a check added NOT VALID
# after the row was written cannot refuse the update.
PARK_SCHEDULES = """
WITH parked AS (
    UPDATE feature_flag_schedules AS s
    SET status = 'failed', applied_at = NULL, next_retry_at = NULL,
        last_error = 'unrecordable: ' || v.reason, last_error_class = 'unrecordable',
        retry_count = least(greatest(s.retry_count, 0), %(max_retry_count)s),
        requeued_at = CASE WHEN s.requeued_at >= %(earliest)s AND s.requeued_at < %(latest)s
                           THEN s.requeued_at END,
        scheduled_at = greatest(least(s.scheduled_at, %(latest)s - interval '1 day'),
                                %(earliest)s),
        created_at = greatest(least(s.created_at, %(latest)s - interval '1 day'), %(earliest)s),
        updated_at = %(now)s
    FROM unnest(%(ids)s::uuid[], %(reasons)s::text[]) AS v(id, reason)
    WHERE s.id = v.id
    RETURNING s.id, v.reason
)
INSERT INTO feature_flag_schedule_attempts
    (schedule_id, attempt, started_at, finished_at, outcome, error_class, error, request_id)
SELECT parked.id, NULL, %(now)s, %(now)s, 'failed_permanently', 'unrecordable', parked.reason,
       %(request_id)s
FROM parked
"""

# (%(name)b sends an array parameter in binary: far cheaper to build than text for
# thousands of elements.)
# Locks those of the given flags no other transaction holds, until the transaction ends,
# and returns their state; held ones are skipped, never waited for, so a run never waits
# for a flag while it holds another (and no two runs can wait on each other). NO KEY UPDATE
# so writers inserting new schedules for a flag (a foreign-key KEY SHARE lock) are not
# blocked. Taken outside any savepoint, so the row's xmax names the run's top-level
# transaction for as long as it holds the lock (see FLAG_LOCK_HOLDERS).
LOCK_FREE_FLAGS = """
SELECT id, flag_key, environment, enabled, rollout_percentage
FROM feature_flags
WHERE id = ANY(%(flag_ids)b::uuid[])
FOR NO KEY UPDATE SKIP LOCKED
"""

# Waits up to lock_timeout for one flag's lock; the caller holds no other flag, takes this
# in a savepoint and rolls it back at once: it only learns that the flag is free now.
WAIT_FOR_FLAG = """
SELECT id FROM feature_flags WHERE id = %(flag_id)s FOR NO KEY UPDATE
"""

# The same without waiting: fails at once (55P03) while another transaction holds the flag.
TRY_FLAG = """
SELECT id FROM feature_flags WHERE id = %(flag_id)s FOR NO KEY UPDATE NOWAIT
"""

# The sessions whose transaction holds the lock on one flag row, when the row's xmax is a
# transaction id: the owner of a live transaction id holds a granted lock on it.
FLAG_LOCK_HOLDERS = """
SELECT a.pid, a.application_name
FROM feature_flags AS f
JOIN pg_locks AS l
  ON l.locktype = 'transactionid' AND l.transactionid = f.xmax AND l.granted
JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE f.id = %(flag_id)s
"""

# The same when the row's xmax is a multixact (several lockers, e.g. a run's NO KEY UPDATE
# and a writer's KEY SHARE): its members that block NO KEY UPDATE, i.e. all but KEY SHARE.
# Fails when xmax names no multixact; the caller runs it in a savepoint.
FLAG_LOCK_HOLDERS_MULTI = """
SELECT a.pid, a.application_name
FROM feature_flags AS f
CROSS JOIN LATERAL pg_get_multixact_members(f.xmax) AS m
JOIN pg_locks AS l
  ON l.locktype = 'transactionid' AND l.transactionid = m.xid AND l.granted
JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE f.id = %(flag_id)s AND m.mode <> 'keysh'
"""

# Applied schedules of each flag ordered after the given (scheduled_at, id), with the
# fields they name: what a schedule ordered earlier must not overwrite.
APPLIED_SINCE = """
SELECT b.flag_id, a.scheduled_at, a.id,
       CASE WHEN jsonb_typeof(a.updates) = 'object'
            THEN ARRAY(SELECT jsonb_object_keys(a.updates)) ELSE '{}' END AS fields
FROM unnest(%(flag_ids)b::uuid[], %(since)b::timestamptz[], %(since_ids)b::uuid[])
     AS b(flag_id, since, since_id)
CROSS JOIN LATERAL (
    SELECT s.scheduled_at, s.id, s.updates
    FROM feature_flag_schedules AS s
    WHERE s.flag_id = b.flag_id AND s.status = 'applied'
      AND (s.scheduled_at, s.id) > (b.since, b.since_id)
    -- OFFSET 0 keeps this a per-flag index range scan on (flag_id, scheduled_at, id):
    -- flattened into a join, the planner cannot estimate the range and hashes every
    -- applied row of the table instead.
    OFFSET 0
) AS a
"""

# Writes the resulting fields of every changed flag of a batch in one statement.
WRITE_FLAGS = """
UPDATE feature_flags AS f
SET enabled = v.enabled, rollout_percentage = v.rollout_percentage, updated_at = %(now)s
FROM unnest(%(ids)b::uuid[], %(enabled)b::boolean[], %(rollout_percentage)b::integer[])
     AS v(id, enabled, rollout_percentage)
WHERE f.id = v.id
"""

# Records the outcome of every schedule of a batch in one statement. applied_at is set
# only for applied ones; retry_count stays after success so history shows it needed retries.
WRITE_OUTCOMES = """
UPDATE feature_flag_schedules AS s
SET status = v.status,
    applied_at = CASE WHEN v.status = 'applied' THEN %(now)s::timestamptz END,
    retry_count = v.retry_count,
    next_retry_at = v.next_retry_at,
    last_error = v.last_error,
    last_error_class = v.last_error_class,
    updated_at = %(now)s
FROM unnest(%(ids)b::uuid[], %(statuses)b::text[], %(retry_counts)b::integer[],
            %(next_retry_at)b::timestamptz[], %(last_errors)b::text[],
            %(error_classes)b::text[])
     AS v(id, status, retry_count, next_retry_at, last_error, last_error_class)
WHERE s.id = v.id
"""

# Appends the history rows of a batch, in the transaction of the outcomes they record.
INSERT_ATTEMPTS = """
INSERT INTO feature_flag_schedule_attempts
    (schedule_id, attempt, started_at, finished_at, outcome, error_class, error, request_id)
SELECT v.schedule_id, v.attempt, %(started_at)s, %(finished_at)s, v.outcome, v.error_class,
       v.error, %(request_id)s
FROM unnest(%(ids)b::uuid[], %(attempts)b::integer[], %(outcomes)b::text[],
            %(error_classes)b::text[], %(errors)b::text[])
     AS v(schedule_id, attempt, outcome, error_class, error)
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

# The two gauges of a run in one round trip: messages not yet delivered (OutboxBacklog) and
# schedules waiting for a retry (RetryBacklog; `due_at IS NOT NULL` lets it use the due index).
COUNT_BACKLOGS = """
SELECT (SELECT count(*) FROM notification_outbox) AS outbox,
       (SELECT count(*)
        FROM feature_flag_schedules
        WHERE due_at IS NOT NULL AND status = 'failed') AS retries
"""

# --- Notification outbox (flag_scheduler.engine.delivery). ---

# Queues a batch's notifications in the transaction of the outcomes they report. A message
# id already queued is the same report (consumers de-duplicate by id): not queued twice.
INSERT_OUTBOX = """
INSERT INTO notification_outbox (message_id, kind, payload, created_at, next_attempt_at)
SELECT v.message_id, v.kind, v.payload::jsonb, %(now)s, %(now)s
FROM unnest(%(message_ids)b::text[], %(kinds)b::text[], %(payloads)b::text[])
     AS v(message_id, kind, payload)
ON CONFLICT (message_id) DO NOTHING
"""

# Deletes messages queued before %(before)s of kinds this run cannot deliver (its topic or
# bus is unset), except rows another run is delivering; one row per message deleted.
DISCARD_OUTBOX = """
DELETE FROM notification_outbox
WHERE id IN (
    SELECT id FROM notification_outbox
    WHERE kind <> ALL(%(kinds)s::text[]) AND created_at < %(before)s
    FOR UPDATE SKIP LOCKED
)
RETURNING kind
"""

# Locks every waiting alert no other run is delivering, oldest first, with what a digest
# counts (as messages.PendingAlert); the caller folds them into one digest or leaves them.
LOCK_WAITING_ALERTS = """
SELECT id, message_id, coalesce(payload->>'schedule_id', '') AS schedule_id,
       coalesce(payload->>'environment', '') AS environment,
       coalesce(nullif(payload->>'error_class', ''), 'unknown') AS error_class,
       payload->>'ramp_id' AS ramp_id,
       -- A stage is 0..20 (states.MAX_RAMP_STAGES); the digits guard keeps a hand-edited
       -- payload from failing the cast, and the whole delivery with it.
       CASE WHEN jsonb_typeof(payload->'stage') = 'number' AND payload->>'stage' ~ '^[0-9]{1,2}$'
            THEN (payload->>'stage')::int END AS stage,
       coalesce(payload->>'flag_key', '') AS flag_key
FROM notification_outbox
WHERE kind = 'alert'
ORDER BY id
FOR UPDATE SKIP LOCKED
"""

# Deletes delivered (or folded) messages; their rows are locked by this transaction.
DELETE_OUTBOX = """
DELETE FROM notification_outbox WHERE id = ANY(%(ids)b::bigint[])
"""

# Claims due messages of the given kinds, oldest due first. SKIP LOCKED: a message another
# run is sending is neither waited for nor sent twice; the lock holds until this transaction
# records the delivery, so a run killed mid-send leaves the message for the next run.
CLAIM_OUTBOX = """
SELECT id, message_id, kind, payload, attempts
FROM notification_outbox
WHERE next_attempt_at <= %(now)s AND kind = ANY(%(kinds)s::text[])
ORDER BY next_attempt_at, id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

# Records failed deliveries: one attempt more (bounded by the column's CHECK), the next
# attempt after its backoff, and why.
RESCHEDULE_OUTBOX = """
UPDATE notification_outbox AS o
SET attempts = least(o.attempts + 1, 1000000),
    next_attempt_at = v.next_attempt_at,
    last_attempt_at = %(now)s,
    last_error = left(v.error, 2000)
FROM unnest(%(ids)b::bigint[], %(next_attempt_at)b::timestamptz[], %(errors)b::text[])
     AS v(id, next_attempt_at, error)
WHERE o.id = v.id
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

# Schedules with their flag's identity (as catalog.ScheduleView), filtered (by status or
# state); NULL filters match all.
# Schedules joined to their flags (s, f), for the operators' reads.
_SCHEDULES_WITH_FLAG = """
FROM feature_flag_schedules AS s
JOIN feature_flags AS f ON f.id = s.flag_id
"""

# A schedule as catalog.ScheduleView reads it, with its flag's identity.
_SCHEDULE_VIEW = (
    """
SELECT s.id, f.flag_key, f.environment, s.scheduled_at, s.status, s.updates::text AS updates,
       s.applied_at, s.retry_count, s.max_retries, s.next_retry_at, s.last_error,
       s.last_error_class, s.requeued_at"""
    + _SCHEDULES_WITH_FLAG
)

# The filters operators list schedules by: status or state, flag, environment, due by.
_SCHEDULE_FILTERS = """
WHERE (%(statuses)s::text[] IS NULL OR s.status = ANY(%(statuses)s::text[])
       -- The state operators see (catalog.ScheduleView.state): `failed` split in three.
       OR (s.status = 'failed' AND CASE WHEN s.next_retry_at IS NOT NULL THEN 'waiting_for_retry'
                                        WHEN s.last_error_class = 'expired' THEN 'expired'
                                        ELSE 'failed_permanently' END = ANY(%(statuses)s::text[])))
  AND (%(flag_key)s::text IS NULL OR f.flag_key = %(flag_key)s::text)
  AND (%(environment)s::text IS NULL OR f.environment = %(environment)s::text)
  AND (%(due_at)s::timestamptz IS NULL OR s.due_at <= %(due_at)s::timestamptz)
"""

LIST_SCHEDULES = (
    _SCHEDULE_VIEW + _SCHEDULE_FILTERS + "ORDER BY s.scheduled_at, s.id\nLIMIT %(limit)s\n"
)

# One schedule with its flag's identity (as catalog.ScheduleView).
GET_SCHEDULE = _SCHEDULE_VIEW + "WHERE s.id = %(schedule_id)s\n"

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
  AND ramp_id IS NULL
RETURNING id
"""

# Cancels a pending or waiting-for-retry schedule. A run holding the row makes this wait
# for its commit, then re-check the state it left, so an applied schedule is never cancelled.
CANCEL_SCHEDULE = """
UPDATE feature_flag_schedules
SET status = 'cancelled', next_retry_at = NULL, updated_at = %(now)s
WHERE id = %(schedule_id)s
  AND (status = 'pending' OR (status = 'failed' AND next_retry_at IS NOT NULL))
  AND ramp_id IS NULL
RETURNING id
"""

# Cancels a ramp's live stage schedule (pause, abort: the caller holds the ramp locked).
CANCEL_RAMP_STAGE = """
UPDATE feature_flag_schedules
SET status = 'cancelled', next_retry_at = NULL, updated_at = %(now)s
WHERE id = %(schedule_id)s
  AND (status = 'pending' OR (status = 'failed' AND next_retry_at IS NOT NULL))
RETURNING id
"""

# Cancels live stages whose ramp is completed or aborted, recording each as cancelled by
# the run; returns the ids cancelled.
CANCEL_ENDED_RAMP_STAGES = """
WITH cancelled AS (
    UPDATE feature_flag_schedules
    SET status = 'cancelled', next_retry_at = NULL, updated_at = %(now)s
    WHERE id = ANY(%(ids)s::uuid[]) AND ramp_id IS NOT NULL
      AND (status = 'pending' OR (status = 'failed' AND next_retry_at IS NOT NULL))
    RETURNING id
), logged AS (
    INSERT INTO feature_flag_schedule_attempts
        (schedule_id, attempt, started_at, finished_at, outcome, request_id, actor)
    SELECT id, NULL, %(now)s, %(now)s, 'cancelled', %(request_id)s, 'scheduler' FROM cancelled
)
SELECT id FROM cancelled
"""

# The ramp a schedule is a stage of (NULL for a plain schedule); no row: no such schedule.
SCHEDULE_RAMP_STAGE = """
SELECT ramp_id, ramp_stage FROM feature_flag_schedules WHERE id = %(schedule_id)s
"""

# The health at a glance, as of %(now)s (named as catalog.StatusReport's fields).
STATUS_COUNTS = """
SELECT
    (SELECT count(*) FROM feature_flag_schedules WHERE due_at <= %(now)s) AS due_now,
    (SELECT min(due_at) FROM feature_flag_schedules WHERE due_at <= %(now)s) AS oldest_due_at,
    (SELECT count(*) FROM feature_flag_schedules
     WHERE status = 'failed' AND next_retry_at IS NOT NULL) AS waiting_for_retry,
    (SELECT min(next_retry_at) FROM feature_flag_schedules
     WHERE status = 'failed' AND next_retry_at IS NOT NULL) AS next_retry_at,
    (SELECT count(*) FROM feature_flag_schedules
     WHERE status = 'pending' AND scheduled_at > %(now)s) AS scheduled_later,
    (SELECT count(*) FROM feature_flag_schedule_attempts
     WHERE outcome IN ('failed_permanently', 'expired')
       AND finished_at > %(now)s - interval '24 hours') AS failed_last_24h
"""

# The last successful run, if any (named as catalog.StatusReport's fields).
GET_RUN_STATE = """
SELECT last_run_started_at, last_run_finished_at, last_request_id AS last_run_request_id,
       last_summary AS last_run_summary
FROM scheduler_run_state
WHERE id = 1
"""

# --- The HTTP API (flag_scheduler.store.api_catalog): writes that record who made them. ---

# Creates a flag, recording who created it, and returns its id.
INSERT_FLAG_BY = """
INSERT INTO feature_flags
    (flag_key, environment, enabled, rollout_percentage, description, created_by)
VALUES (%(flag_key)s, %(environment)s, %(enabled)s, %(rollout_percentage)s, %(description)s,
        %(created_by)s)
RETURNING id
"""

# Creates a pending schedule, recording who created it, and returns its id.
INSERT_SCHEDULE_BY = """
INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates, max_retries, created_by)
VALUES (%(flag_id)s, %(scheduled_at)s, %(updates)s, %(max_retries)s, %(created_by)s)
RETURNING id
"""

# Serialises schedule creation per flag until the transaction ends, so two writers cannot
# both pass the same-instant clash check. An advisory lock, not the flag row's: a run holds
# that row while it applies, and creating a schedule must not wait for a run.
LOCK_FLAG_FOR_PLANNING = """
SELECT pg_advisory_xact_lock(hashtextextended(%(flag_id)s::text, 8675309))
"""

# A flag's changes still to come (pending, or waiting for a retry), in scheduled order,
# named as timeline.PendingChange's inputs; `updates` as text, decoded by the caller.
PENDING_CHANGES_OF_FLAG = """
SELECT id, scheduled_at, updates::text AS updates,
       coalesce(next_retry_at, scheduled_at) AS next_attempt_at,
       coalesce(requeued_at, scheduled_at) AS lateness_from
FROM feature_flag_schedules
WHERE flag_id = %(flag_id)s
  AND (status = 'pending' OR (status = 'failed' AND next_retry_at IS NOT NULL))
ORDER BY scheduled_at, id
"""

# For each field, the (scheduled_at, id) of the latest-scheduled applied change that set it:
# what the engine compares a later-applied change against.
LAST_SET_BY_FIELD = """
SELECT DISTINCT ON (k.field) k.field, s.scheduled_at, s.id
FROM feature_flag_schedules AS s
CROSS JOIN LATERAL jsonb_object_keys(
    CASE WHEN jsonb_typeof(s.updates) = 'object' THEN s.updates ELSE '{}' END) AS k(field)
WHERE s.flag_id = %(flag_id)s AND s.status = 'applied'
ORDER BY k.field, s.scheduled_at DESC, s.id DESC
"""

# The idempotency record of (caller, key), if any.
GET_IDEMPOTENCY_KEY = """
SELECT request_hash, schedule_id, response, created_at
FROM api_idempotency_keys
WHERE actor = %(actor)s AND idempotency_key = %(key)s
"""

# Forgets a key whose schedule no longer exists (deleted, or its table truncated).
DELETE_IDEMPOTENCY_KEY = """
DELETE FROM api_idempotency_keys WHERE actor = %(actor)s AND idempotency_key = %(key)s
"""

# Claims (caller, key) for the schedule just created; returns nothing when a concurrent
# request holding the same key committed first (this one then waits for it and rolls back).
INSERT_IDEMPOTENCY_KEY = """
INSERT INTO api_idempotency_keys
    (actor, idempotency_key, request_hash, schedule_id, response, created_at)
VALUES (%(actor)s, %(key)s, %(request_hash)s, %(schedule_id)s, %(response)s, %(now)s)
ON CONFLICT (actor, idempotency_key) DO NOTHING
RETURNING schedule_id
"""

# Deletes a batch of keys created at or before the cutoff, oldest first; rows another
# request holds are skipped (a later batch takes them), so no create waits on this.
DELETE_EXPIRED_IDEMPOTENCY_KEYS = """
DELETE FROM api_idempotency_keys
WHERE (actor, idempotency_key) IN (
    SELECT actor, idempotency_key FROM api_idempotency_keys
    WHERE created_at <= %(cutoff)s
    ORDER BY created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
"""

# Appends an operator action to a schedule's history with the caller who made it.
INSERT_ACTION = """
INSERT INTO feature_flag_schedule_attempts
    (schedule_id, attempt, started_at, finished_at, outcome, request_id, actor)
VALUES (%(schedule_id)s, NULL, %(now)s, %(now)s, %(outcome)s, %(request_id)s, %(actor)s)
"""

# A schedule's history with the caller behind each operator action, oldest first.
SCHEDULE_HISTORY_WITH_ACTOR = """
SELECT attempt, started_at, finished_at, outcome, error_class, error, request_id, actor
FROM feature_flag_schedule_attempts
WHERE schedule_id = %(schedule_id)s
ORDER BY id
"""

# One page of schedules (as catalog.ScheduleView) in (scheduled_at, id) order, after the
# cursor's (scheduled_at, id): keyset paging, so rows inserted meanwhile never shift a page
# (no row is skipped or repeated). Filters as LIST_SCHEDULES; NULL filters match all.
LIST_SCHEDULES_PAGE = (
    _SCHEDULE_VIEW
    + _SCHEDULE_FILTERS
    + """  AND (%(after_at)s::timestamptz IS NULL
       OR (s.scheduled_at, s.id) > (%(after_at)s::timestamptz, %(after_id)s::uuid))
ORDER BY s.scheduled_at, s.id
LIMIT %(limit)s
"""
)

# A flag's most recently changed finished schedules (applied, failed for good, cancelled,
# superseded), newest first.
RECENT_SCHEDULES_OF_FLAG = (
    _SCHEDULE_VIEW
    + """WHERE s.flag_id = %(flag_id)s AND s.status <> 'pending'
  AND NOT (s.status = 'failed' AND s.next_retry_at IS NOT NULL)
ORDER BY s.updated_at DESC, s.id DESC
LIMIT %(limit)s
"""
)

# Which schedules a bulk requeue takes: permanently failed (or expired) ones matching a
# filter, oldest failure first. NULL filters match all.
_REQUEUEABLE_FILTER = """
WHERE s.status = 'failed' AND s.next_retry_at IS NULL AND s.ramp_id IS NULL
  AND (%(expired)s::boolean IS NULL
       OR (coalesce(s.last_error_class, '') = 'expired') = %(expired)s::boolean)
  AND (%(flag_key)s::text IS NULL OR f.flag_key = %(flag_key)s::text)
  AND (%(environment)s::text IS NULL OR f.environment = %(environment)s::text)
  AND (%(error_class)s::text IS NULL OR s.last_error_class = %(error_class)s::text)
  AND (%(failed_since)s::timestamptz IS NULL OR s.updated_at >= %(failed_since)s::timestamptz)
  AND (%(failed_before)s::timestamptz IS NULL OR s.updated_at < %(failed_before)s::timestamptz)
ORDER BY s.updated_at, s.id
LIMIT %(limit)s
"""

# The requeueable schedules' ids, locked so a bulk requeue sees each row's state after any
# run that holds it commits (rows that are no longer permanently failed then drop out).
SELECT_REQUEUEABLE = (
    "SELECT s.id" + _SCHEDULES_WITH_FLAG + _REQUEUEABLE_FILTER.lstrip() + "FOR UPDATE OF s\n"
)

# The requeueable schedules (as catalog.ScheduleView) for a dry run: a plain read, no lock,
# so a preview never waits on a run nor holds one up.
PREVIEW_REQUEUEABLE = _SCHEDULE_VIEW + _REQUEUEABLE_FILTER.lstrip()

# Requeues the given permanently failed schedules (as REQUEUE_SCHEDULE) and records each
# requeue with its caller, in one statement; returns the ids requeued.
REQUEUE_MANY = """
WITH requeued AS (
    UPDATE feature_flag_schedules
    SET status = 'pending', retry_count = 0, next_retry_at = NULL, last_error = NULL,
        last_error_class = NULL, requeued_at = %(now)s, updated_at = %(now)s
    WHERE id = ANY(%(ids)s::uuid[]) AND status = 'failed' AND next_retry_at IS NULL
      AND ramp_id IS NULL
    RETURNING id
), logged AS (
    INSERT INTO feature_flag_schedule_attempts
        (schedule_id, attempt, started_at, finished_at, outcome, request_id, actor)
    SELECT id, NULL, %(now)s, %(now)s, 'requeued', %(request_id)s, %(actor)s FROM requeued
)
SELECT id FROM requeued
"""

# --- Ramps as operators see and steer them (flag_scheduler.store.ramps). ---
# Lock order, as the engine's: a ramp's live stage schedule, then the ramp row.

# Creates an active ramp at stage 0 (its schedule is inserted with it).
INSERT_RAMP = """
INSERT INTO flag_ramps (flag_id, starts_at, stages, end_updates, guard_alarms,
                        rollback_on_alarm, insufficient_data, created_by, created_at, updated_at)
VALUES (%(flag_id)s, %(starts_at)s, %(stages)s, %(end_updates)s, %(guard_alarms)s,
        %(rollback_on_alarm)s, %(insufficient_data)s, %(actor)s, %(now)s, %(now)s)
RETURNING id
"""

# A flag's unfinished ramp, to name it when a second one is refused.
UNFINISHED_RAMP_OF_FLAG = """
SELECT id, state FROM flag_ramps
WHERE flag_id = %(flag_id)s AND state IN ('active', 'paused', 'halted')
"""

# A flag's unfinished ramp (at most one), with what a new change must hear of it.
RAMP_IN_PROGRESS_OF_FLAG = """
SELECT id, state, current_stage, stages, end_updates FROM flag_ramps
WHERE flag_id = %(flag_id)s AND state IN ('active', 'paused', 'halted')
"""

# Inserts one stage's schedule of a ramp (pending, the default retry limit).
INSERT_RAMP_STAGE_SCHEDULE = """
INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates, ramp_id, ramp_stage)
VALUES (%(flag_id)s, %(scheduled_at)s, %(updates)s, %(ramp_id)s, %(ramp_stage)s)
RETURNING id
"""

# Appends one row to a ramp's history.
INSERT_RAMP_EVENT = """
INSERT INTO flag_ramp_events (ramp_id, at, action, stage, actor, detail)
VALUES (%(ramp_id)s, %(at)s, %(action)s, %(stage)s, %(actor)s, %(detail)s)
"""

# Ramps with their flag's identity (as ramps.RampView), newest first; NULL filters match all.
# Keyset pages: the ramps after (created_at, id) of the last one shown; a NULL limit is all.
LIST_RAMPS = """
SELECT r.id, f.flag_key, f.environment, r.state, r.starts_at, r.stages, r.end_updates,
       r.current_stage, r.guard_alarms, r.rollback_on_alarm, r.insufficient_data,
       r.value_before, r.halt_error_class, r.halt_reason, r.paused_remaining_seconds,
       r.created_by, r.created_at, r.updated_at, r.finished_at
FROM flag_ramps AS r
JOIN feature_flags AS f ON f.id = r.flag_id
WHERE (%(flag_key)s::text IS NULL OR f.flag_key = %(flag_key)s::text)
  AND (%(environment)s::text IS NULL OR f.environment = %(environment)s::text)
  AND (%(states)s::text[] IS NULL OR r.state = ANY(%(states)s::text[]))
  AND (%(after_created_at)s::timestamptz IS NULL
       OR (r.created_at, r.id) < (%(after_created_at)s::timestamptz, %(after_id)s::uuid))
ORDER BY r.created_at DESC, r.id DESC
LIMIT %(limit)s
"""

# One ramp with its flag's identity (as ramps.RampView).
GET_RAMP = """
SELECT r.id, f.flag_key, f.environment, r.state, r.starts_at, r.stages, r.end_updates,
       r.current_stage, r.guard_alarms, r.rollback_on_alarm, r.insufficient_data,
       r.value_before, r.halt_error_class, r.halt_reason, r.paused_remaining_seconds,
       r.created_by, r.created_at, r.updated_at, r.finished_at
FROM flag_ramps AS r
JOIN feature_flags AS f ON f.id = r.flag_id
WHERE r.id = %(ramp_id)s
"""

# Every schedule a ramp's stages had, cancelled ones too (as ramps.StageSchedule).
RAMP_SCHEDULES = """
SELECT ramp_stage AS stage, id AS schedule_id, scheduled_at, status, applied_at, retry_count,
       next_retry_at, last_error, last_error_class, updates
FROM feature_flag_schedules
WHERE ramp_id = %(ramp_id)s
ORDER BY ramp_stage, created_at, id
"""

# A ramp's history, oldest first (as ramps.RampEvent).
RAMP_EVENTS = """
SELECT at, action, stage, actor, detail
FROM flag_ramp_events
WHERE ramp_id = %(ramp_id)s
ORDER BY id
"""

# Locks a ramp's live stage schedule (pending or waiting for a retry), if it has one. A run
# applying that stage makes this wait for its commit; the row is then re-checked and skipped.
LOCK_LIVE_RAMP_SCHEDULE = """
SELECT id, ramp_stage, scheduled_at, next_retry_at
FROM feature_flag_schedules
WHERE ramp_id = %(ramp_id)s AND (status = 'pending' OR next_retry_at IS NOT NULL)
FOR UPDATE
"""

# The same without a lock: after the ramp row is locked, whether the live schedule is still
# the one locked (a run may have applied it and inserted the next stage in between).
LIVE_RAMP_SCHEDULES = """
SELECT id FROM feature_flag_schedules
WHERE ramp_id = %(ramp_id)s AND (status = 'pending' OR next_retry_at IS NOT NULL)
"""

# Locks a ramp row and returns what an operator action needs (as ramps.LockedRamp).
LOCK_RAMP = """
SELECT id, flag_id, state, current_stage, stages, end_updates, value_before,
       paused_remaining_seconds
FROM flag_ramps
WHERE id = %(ramp_id)s
FOR UPDATE
"""

# The schedule a halted ramp's current stage failed (or expired) with, if any.
# Requeues a halted ramp's failed stage as due now: keeping its old scheduled_at would let a
# later-scheduled change of the flag (e.g. the guard-alarm rollback) supersede it.
REQUEUE_RAMP_STAGE = """
UPDATE feature_flag_schedules
SET status = 'pending', scheduled_at = %(now)s, retry_count = 0, next_retry_at = NULL,
    last_error = NULL, last_error_class = NULL, requeued_at = %(now)s, updated_at = %(now)s
WHERE id = %(schedule_id)s AND status = 'failed' AND next_retry_at IS NULL
RETURNING id
"""

FAILED_RAMP_STAGE_SCHEDULE = """
SELECT id FROM feature_flag_schedules
WHERE ramp_id = %(ramp_id)s AND ramp_stage = %(stage)s AND status = 'failed'
  AND next_retry_at IS NULL
"""

# Moves a ramp to another state. Becoming active again forgets why it halted; finishing
# stamps finished_at; only a paused ramp keeps the rest of its hold.
SET_RAMP_STATE = """
UPDATE flag_ramps
SET state = %(state)s,
    paused_remaining_seconds = %(paused_remaining_seconds)s,
    halt_error_class = CASE WHEN %(state)s::text = 'active' THEN NULL ELSE halt_error_class END,
    halt_reason = CASE WHEN %(state)s::text = 'active' THEN NULL ELSE halt_reason END,
    finished_at = CASE WHEN %(state)s::text IN ('completed', 'aborted') THEN %(now)s END,
    updated_at = %(now)s
WHERE id = %(ramp_id)s
"""
