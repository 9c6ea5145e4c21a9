"""Injected database failures for demos and tests; migrations never install this."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg

# A row in fault_injection makes every UPDATE of that flag raise the given SQLSTATE, the way
# a real serialization failure, deadlock or lock timeout reaches the scheduler.
#
# The other faults are keyed by schedule attempt, not by statement: a row in
# fault_injection_attempts, or fault_injection_random's hash of (schedule id, attempt number),
# makes that one attempt fail when it marks its schedule applied. The decision is a pure
# function of the attempt, so it needs no counter (a failed attempt's savepoint rolls back
# every write) and holds however many statements, or re-executions after a failed group,
# the engine spends on one attempt. fault_injection_pick is the hash, also for checks.
INSTALL = """
CREATE TABLE IF NOT EXISTS fault_injection (
    flag_id uuid PRIMARY KEY,
    sqlstate text NOT NULL,
    message text NOT NULL
);
CREATE TABLE IF NOT EXISTS fault_injection_attempts (
    schedule_id uuid NOT NULL,
    attempt integer NOT NULL,
    sqlstate text NOT NULL,
    message text NOT NULL,
    PRIMARY KEY (schedule_id, attempt)
);
CREATE TABLE IF NOT EXISTS fault_injection_random (
    id integer PRIMARY KEY CHECK (id = 1),
    per_million integer NOT NULL,
    sqlstates text[] NOT NULL,
    seed bigint NOT NULL
);
CREATE OR REPLACE FUNCTION fault_injection_raise() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    fault record;
BEGIN
    SELECT sqlstate, message INTO fault FROM fault_injection WHERE flag_id = NEW.id;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = fault.sqlstate, MESSAGE = fault.message;
    END IF;
    RETURN NEW;
END;
$$;
DROP TRIGGER IF EXISTS fault_injection ON feature_flags;
CREATE TRIGGER fault_injection BEFORE UPDATE ON feature_flags
    FOR EACH ROW EXECUTE FUNCTION fault_injection_raise();

CREATE OR REPLACE FUNCTION fault_injection_pick(
    schedule_id uuid, attempt integer, per_million integer, sqlstates text[], seed bigint
) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN abs(h % 1000000) < per_million
                THEN sqlstates[1 + abs((h / 1000000) % cardinality(sqlstates))] END
    FROM (SELECT hashtextextended(schedule_id::text || ':' || attempt, seed) AS h) AS hashed
$$;
CREATE OR REPLACE FUNCTION fault_injection_attempt_raise() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    attempt integer := OLD.retry_count + 1;
    fault record;
    kind text;
BEGIN
    SELECT sqlstate, message INTO fault
    FROM fault_injection_attempts AS a
    WHERE a.schedule_id = NEW.id AND a.attempt = OLD.retry_count + 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = fault.sqlstate, MESSAGE = fault.message;
    END IF;
    SELECT fault_injection_pick(NEW.id, attempt, r.per_million, r.sqlstates, r.seed) INTO kind
    FROM fault_injection_random AS r;
    IF kind IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = kind,
            MESSAGE = format('injected %s (random fault, attempt %s)', kind, attempt);
    END IF;
    RETURN NEW;
END;
$$;
DROP TRIGGER IF EXISTS fault_injection_attempt ON feature_flag_schedules;
CREATE TRIGGER fault_injection_attempt BEFORE UPDATE ON feature_flag_schedules
    FOR EACH ROW WHEN (NEW.status = 'applied' AND OLD.status <> 'applied')
    EXECUTE FUNCTION fault_injection_attempt_raise();
"""

# Makes updates of one flag fail with a SQLSTATE until cleared.
SET_FAULT = """
INSERT INTO fault_injection (flag_id, sqlstate, message)
VALUES (%(flag_id)s, %(sqlstate)s, %(message)s)
ON CONFLICT (flag_id) DO UPDATE SET sqlstate = EXCLUDED.sqlstate, message = EXCLUDED.message
"""

# Lets updates of one flag succeed again.
CLEAR_FAULT = "DELETE FROM fault_injection WHERE flag_id = %(flag_id)s"

# Makes one attempt of one schedule fail.
FAIL_ATTEMPT = """
INSERT INTO fault_injection_attempts (schedule_id, attempt, sqlstate, message)
VALUES (%(schedule_id)s, %(attempt)s, %(sqlstate)s, %(message)s)
ON CONFLICT (schedule_id, attempt) DO UPDATE SET sqlstate = EXCLUDED.sqlstate,
    message = EXCLUDED.message
"""

# Forgets every per-attempt fault.
CLEAR_ATTEMPT_FAULTS = "DELETE FROM fault_injection_attempts"

# Sets (or replaces) the random faults.
SET_RANDOM = """
INSERT INTO fault_injection_random (id, per_million, sqlstates, seed)
VALUES (1, %(per_million)s, %(sqlstates)s, %(seed)s)
ON CONFLICT (id) DO UPDATE SET per_million = EXCLUDED.per_million,
    sqlstates = EXCLUDED.sqlstates, seed = EXCLUDED.seed
"""

# Stops the random faults.
CLEAR_RANDOM = "DELETE FROM fault_injection_random"

# The random fault every attempt in the history drew (NULL: none), by schedule and attempt.
RANDOM_DRAWS = """
SELECT a.schedule_id, a.attempt,
       fault_injection_pick(a.schedule_id, a.attempt, r.per_million, r.sqlstates, r.seed)
FROM feature_flag_schedule_attempts AS a, fault_injection_random AS r
WHERE a.attempt IS NOT NULL
"""


def install(conn: psycopg.Connection[Any]) -> None:
    conn.execute(INSTALL)


def set_fault(
    conn: psycopg.Connection[Any], flag_id: UUID, sqlstate: str, message: str = "injected fault"
) -> None:
    conn.execute(SET_FAULT, {"flag_id": flag_id, "sqlstate": sqlstate, "message": message})


def clear_fault(conn: psycopg.Connection[Any], flag_id: UUID) -> None:
    conn.execute(CLEAR_FAULT, {"flag_id": flag_id})


def fail_attempt(
    conn: psycopg.Connection[Any],
    schedule_id: UUID,
    attempt: int,
    sqlstate: str,
    message: str = "injected fault",
) -> None:
    """Make attempt number `attempt` (1 = the first) of one schedule fail with `sqlstate`."""
    conn.execute(
        FAIL_ATTEMPT,
        {"schedule_id": schedule_id, "attempt": attempt, "sqlstate": sqlstate, "message": message},
    )


def clear_attempt_faults(conn: psycopg.Connection[Any]) -> None:
    conn.execute(CLEAR_ATTEMPT_FAULTS)


def set_random_faults(
    conn: psycopg.Connection[Any], *, rate: float, sqlstates: Sequence[str], seed: int = 0
) -> None:
    """Make about `rate` of all attempts fail, each with one of `sqlstates` (by hash)."""
    if not 0 <= rate <= 1 or not sqlstates:
        raise ValueError(f"rate must be in 0..1 and sqlstates non-empty, got {rate}, {sqlstates}")
    conn.execute(
        SET_RANDOM,
        {"per_million": round(rate * 1_000_000), "sqlstates": list(sqlstates), "seed": seed},
    )


def clear_random_faults(conn: psycopg.Connection[Any]) -> None:
    conn.execute(CLEAR_RANDOM)


def random_draws(conn: psycopg.Connection[Any]) -> dict[tuple[UUID, int], str | None]:
    """For every attempt in the history, the random fault it drew (None: it was spared)."""
    return {(row[0], row[1]): row[2] for row in conn.execute(RANDOM_DRAWS)}
