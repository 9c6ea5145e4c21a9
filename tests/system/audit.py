"""Test-only triggers that record every application, to prove exactly-once under concurrency."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

# Every UPDATE that marks a schedule applied and every UPDATE of a flag leaves a row here;
# a schedule applied twice shows up twice, whatever the statuses say afterwards.
INSTALL_AUDIT = """
CREATE TABLE schedule_applications (schedule_id uuid NOT NULL);
CREATE TABLE flag_writes (flag_id uuid NOT NULL);
CREATE FUNCTION audit_schedule_applied() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'applied' THEN
        INSERT INTO schedule_applications VALUES (NEW.id);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_schedule_applied AFTER UPDATE ON feature_flag_schedules
    FOR EACH ROW EXECUTE FUNCTION audit_schedule_applied();
CREATE FUNCTION audit_flag_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO flag_writes VALUES (NEW.id);
    RETURN NEW;
END $$;
CREATE TRIGGER audit_flag_write AFTER UPDATE ON feature_flags
    FOR EACH ROW EXECUTE FUNCTION audit_flag_write();
"""

# Makes each flag write take a little while, so concurrent runs overlap and a kill lands
# in the middle of a batch.
INSTALL_SLOW_WRITES = """
CREATE FUNCTION slow_flag_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(%(seconds)s);
    RETURN NEW;
END $$;
CREATE TRIGGER slow_flag_write BEFORE UPDATE ON feature_flags
    FOR EACH ROW EXECUTE FUNCTION slow_flag_write();
"""


def install(conn: psycopg.Connection[Any], *, write_delay_seconds: float) -> None:
    conn.execute(INSTALL_AUDIT)
    conn.execute(INSTALL_SLOW_WRITES.replace("%(seconds)s", repr(float(write_delay_seconds))))


def invoke_command() -> list[str]:
    return [sys.executable, "-m", "flag_scheduler_cli.cli", "invoke"]


def invoke_env(database_url: str, **settings: str) -> dict[str, str]:
    env = {**os.environ, "DATABASE_URL": database_url, "POWERTOOLS_METRICS_DISABLED": "true"}
    env["POWERTOOLS_LOG_LEVEL"] = "WARNING"
    env.update(settings)
    return env


def start_invoker(database_url: str, **settings: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        invoke_command(),
        env=invoke_env(database_url, **settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_exactly_once(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Assert the whole-table invariants after a drain; returns status counts."""
    statuses = check_exactly_once_or_waiting(conn)
    assert set(statuses) <= {"applied", "superseded"}, statuses
    return statuses


def check_exactly_once_or_waiting(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """The invariants with failed schedules allowed; returns status counts."""
    schedules = conn.execute(
        "SELECT s.id, s.flag_id, s.scheduled_at, s.status, s.updates FROM feature_flag_schedules s"
    ).fetchall()
    statuses: dict[str, int] = defaultdict(int)
    for row in schedules:
        statuses[row[3]] += 1
    assert set(statuses) <= {"applied", "superseded", "failed"}, dict(statuses)

    duplicates = conn.execute(
        "SELECT schedule_id, count(*) FROM schedule_applications GROUP BY 1 HAVING count(*) > 1"
    ).fetchall()
    assert duplicates == [], f"applied more than once: {duplicates[:5]}"
    applications = conn.execute("SELECT count(*) FROM schedule_applications").fetchone()
    writes = conn.execute("SELECT count(*) FROM flag_writes").fetchone()
    assert applications is not None
    assert writes is not None
    assert applications[0] == statuses["applied"]
    # A batch writes each flag once, whatever number of its schedules it applies; and no
    # flag is written without a schedule applied to it.
    assert writes[0] <= statuses["applied"]
    unwritten = conn.execute(
        "SELECT count(DISTINCT flag_id) FROM feature_flag_schedules WHERE status = 'applied'"
        " AND flag_id NOT IN (SELECT flag_id FROM flag_writes)"
    ).fetchone()
    assert unwritten == (0,)

    expected: dict[UUID, dict[str, object]] = defaultdict(dict)
    latest: dict[tuple[UUID, str], tuple[datetime, str]] = {}
    for schedule_id, flag_id, scheduled_at, status, updates in schedules:
        if status == "failed":
            continue  # not applied: it sets nothing
        for field, value in updates.items():
            key = (flag_id, field)
            order = (scheduled_at, str(schedule_id))
            if key not in latest or order > latest[key]:
                latest[key] = order
                expected[flag_id][field] = value
    for flag_id, enabled, rollout in conn.execute(
        "SELECT id, enabled, rollout_percentage FROM feature_flags"
    ):
        actual = {"enabled": enabled, "rollout_percentage": rollout}
        for field, value in expected[flag_id].items():
            assert actual[field] == value, (flag_id, field, actual, expected[flag_id])
    return dict(statuses)
