-- The HTTP API's own database role: what ApiFunction (and `flag-scheduler serve`) needs, no
-- more. Run as the tables' owner (the role `flag-scheduler migrate` ran as) after migrating,
-- and again after a migration adds a table. Give the role a password (ALTER ROLE ... PASSWORD)
-- and put it in a secret of its own, passed to the stack as ApiDbSecretArn.
--
-- What it cannot do: delete a flag, a schedule or any history; change a flag's value (only the
-- scheduler applies changes); touch the scheduler's run state or the notification outbox; run
-- DDL. tests/api/test_api_role.py runs every operation of the API as this role.

DO $$
BEGIN
    CREATE ROLE flag_scheduler_api LOGIN;
EXCEPTION WHEN duplicate_object THEN
    NULL;  -- a second run only grants again
END $$;

GRANT USAGE ON SCHEMA public TO flag_scheduler_api;

-- Reads: flags, schedules and their history, ramps and theirs, the last run (GET /status).
GRANT SELECT ON feature_flags, feature_flag_schedules, feature_flag_schedule_attempts,
    flag_ramps, flag_ramp_events, scheduler_run_state, api_idempotency_keys
    TO flag_scheduler_api;

-- Writes: create flags, schedules and ramps; cancel, retry and requeue schedules; steer ramps;
-- record each action in the history, with its actor.
GRANT INSERT ON feature_flags, feature_flag_schedules, feature_flag_schedule_attempts,
    flag_ramps, flag_ramp_events, api_idempotency_keys
    TO flag_scheduler_api;
GRANT UPDATE ON feature_flag_schedules, flag_ramps TO flag_scheduler_api;
-- Expired idempotency keys are deleted a batch at a time, the rows locked FOR UPDATE first
-- (which PostgreSQL allows only with UPDATE).
GRANT UPDATE, DELETE ON api_idempotency_keys TO flag_scheduler_api;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO flag_scheduler_api;
