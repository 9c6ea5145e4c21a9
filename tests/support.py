"""Helpers the tests share: URLs, running the service with a chosen clock, reading rows,
running the CLI and Alembic as users do, and waiting for a session to wait on a lock."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from flag_scheduler.engine.backoff import BackoffPolicy
from flag_scheduler.engine.notifier import Notifier, NullNotifier, SendReport
from flag_scheduler.engine.ramps import AlarmReader
from flag_scheduler.engine.records import ClaimedMessage, RunSummary
from flag_scheduler.engine.run_loop import RunPolicy, process_due_schedules
from flag_scheduler.engine.states import MessageKind
from flag_scheduler.store.repository import ScheduleRepository

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[1]


class ReadingsClock:
    """A clock that moves one second per reading and keeps its readings."""

    def __init__(self, start: datetime) -> None:
        self.readings: list[datetime] = []
        self._start = start

    def __call__(self) -> datetime:
        self.readings.append(self._start + timedelta(seconds=len(self.readings)))
        return self.readings[-1]


def database_url_for(server_url: str, database: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


class QueueOnly:
    """A notifier for `kinds` that the run queues messages for (a run never sends)."""

    def __init__(self, kinds: frozenset[MessageKind]) -> None:
        self.kinds = kinds

    def send(self, messages: Sequence[ClaimedMessage], *, deadline: float) -> SendReport:
        raise AssertionError("the run itself never sends")


def run_service(
    database_url: str,
    now: datetime,
    *,
    max_retries: int = 3,
    batch_size: int = 100,
    backoff: BackoffPolicy | None = None,
    remaining_ms: Any = None,
    lock_timeout_ms: int = 2_000,
    outage_threshold: int = 5,
    alarms: AlarmReader | None = None,
    max_lateness_seconds: int = 86_400,
    queue: frozenset[MessageKind] = frozenset(),
) -> RunSummary:
    """One scheduler run on its own connection, with the clock stopped at `now`; messages of
    the kinds in `queue` are written to the outbox (none by default)."""
    policy = RunPolicy(
        max_retries=max_retries,
        batch_size=batch_size,
        time_margin_ms=1_000,
        backoff=backoff or BackoffPolicy(),
        lock_timeout_ms=lock_timeout_ms,
        outage_threshold=outage_threshold,
        statement_timeout_ms=10_000,
        max_lateness_seconds=max_lateness_seconds,
    )
    notifier: Notifier = QueueOnly(queue) if queue else NullNotifier()
    with psycopg.connect(database_url, autocommit=True) as conn:
        return process_due_schedules(
            ScheduleRepository(conn),
            notifier,
            clock=lambda: now,
            remaining_ms=remaining_ms or (lambda: 60_000),
            policy=policy,
            alarms=alarms,
        )


@dataclass(frozen=True)
class ScheduleRow:
    status: str
    retry_count: int
    next_retry_at: datetime | None
    last_error: str | None
    applied_at: datetime | None


def schedule_row(conn: psycopg.Connection[Any], schedule_id: UUID) -> ScheduleRow:
    row = conn.execute(
        "SELECT status, retry_count, next_retry_at, last_error, applied_at"
        " FROM feature_flag_schedules WHERE id = %s",
        (schedule_id,),
    ).fetchone()
    assert row is not None
    return ScheduleRow(*row)


def flag_fields(conn: psycopg.Connection[Any], flag_id: UUID) -> dict[str, Any]:
    row = conn.execute(
        "SELECT enabled, rollout_percentage FROM feature_flags WHERE id = %s", (flag_id,)
    ).fetchone()
    assert row is not None
    return {"enabled": row[0], "rollout_percentage": row[1]}


def history(conn: psycopg.Connection[Any], schedule_id: UUID) -> list[tuple[Any, ...]]:
    """(attempt, outcome, error_class) of every history row of a schedule, oldest first."""
    return [
        tuple(row)
        for row in conn.execute(
            "SELECT attempt, outcome, error_class FROM feature_flag_schedule_attempts"
            " WHERE schedule_id = %s ORDER BY id",
            (schedule_id,),
        )
    ]


def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The console script in a subprocess (as a user runs it), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "flag_scheduler_cli.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment without DATABASE_URL and without metrics, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update({"POWERTOOLS_METRICS_DISABLED": "true", **extra})
    return env


class Cli:
    """`flag-scheduler` bound to one test database."""

    def __init__(self, database_url: str) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=self.env)

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def fails(self, code: int, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == code, (result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr  # one clear line
        assert lines[0].startswith("flag-scheduler: error: ") or "usage:" in result.stderr
        return lines[0]


def row_counts(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """How many flags, schedules and history rows there are, and each schedule's status and
    retry count: equal before and after, a command wrote nothing."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM feature_flags),"
        " (SELECT count(*) FROM feature_flag_schedules),"
        " (SELECT count(*) FROM feature_flag_schedule_attempts),"
        " (SELECT string_agg(status || retry_count, ',' ORDER BY id) FROM feature_flag_schedules)"
    ).fetchone()
    assert row is not None
    return tuple(row)


def alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Alembic as an operator runs it: from the repository root, DATABASE_URL in the env."""
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        check=False,
    )


def public_tables(url: str) -> set[str]:
    """The tables in the database's public schema."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def backend_pid(conn: psycopg.Connection[Any] | None) -> int:
    """The server process behind a connection (which must exist)."""
    assert conn is not None
    return conn.info.backend_pid


def wait_for_lock_waiters(
    conn: psycopg.Connection[Any],
    *,
    count: int = 1,
    application_name: str | None = None,
    wait_event: str | None = None,
    timeout: float = 30,
) -> list[int]:
    """The pids of the sessions of this database waiting on a lock, once there are `count`
    (only those of `application_name`, and waiting on a `wait_event` lock, when given).

    Polls: the waiting session is another process, and the test goes on only once it waits.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND wait_event_type = 'Lock'"
            " AND (%(app)s::text IS NULL OR application_name = %(app)s::text)"
            " AND (%(event)s::text IS NULL OR wait_event = %(event)s::text)"
            " ORDER BY pid",
            {"app": application_name, "event": wait_event},
        ).fetchall()
        if len(waiting) >= count:
            return [row[0] for row in waiting]
        time.sleep(0.01)
    activity = conn.execute(
        "SELECT application_name, state, wait_event_type, wait_event, query"
        " FROM pg_stat_activity WHERE datname = current_database()"
    ).fetchall()
    raise AssertionError(
        f"expected {count} session(s) of {application_name or 'any application'} waiting on"
        f" a {wait_event or 'any'} lock within {timeout} s: {activity}"
    )


def insert_ramp(
    conn: psycopg.Connection[Any],
    flag_id: UUID,
    starts_at: datetime,
    rollouts: Sequence[int],
    *,
    hold_seconds: int = 600,
    guard_alarms: Sequence[str] = (),
    rollback_on_alarm: bool = False,
    insufficient_data: str = "wait",
    end_updates: dict[str, Any] | None = None,
) -> UUID:
    """An active ramp of `rollouts` with stage 0's schedule due at `starts_at`, written as
    rows (the engine tests need holds shorter than creation allows)."""
    stages = [
        {"updates": {"rollout_percentage": r}, "hold_seconds": hold_seconds} for r in rollouts
    ]
    row = conn.execute(
        "INSERT INTO flag_ramps (flag_id, starts_at, stages, end_updates, guard_alarms,"
        " rollback_on_alarm, insufficient_data, created_by)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, 'test') RETURNING id",
        (
            flag_id,
            starts_at,
            Jsonb(stages),
            None if end_updates is None else Jsonb(end_updates),
            list(guard_alarms),
            rollback_on_alarm,
            insufficient_data,
        ),
    ).fetchone()
    assert row is not None
    conn.execute(
        "INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates, ramp_id, ramp_stage)"
        " VALUES (%s, %s, %s, %s, 0)",
        (flag_id, starts_at, Jsonb(stages[0]["updates"]), row[0]),
    )
    return UUID(str(row[0]))


def ramp_stages(conn: psycopg.Connection[Any], ramp_id: UUID) -> list[tuple[Any, ...]]:
    """(stage, status, scheduled_at, applied_at) of each stage schedule, by stage."""
    return conn.execute(
        "SELECT ramp_stage, status, scheduled_at, applied_at FROM feature_flag_schedules"
        " WHERE ramp_id = %s ORDER BY ramp_stage, created_at",
        (ramp_id,),
    ).fetchall()


def ramp_state(conn: psycopg.Connection[Any], ramp_id: UUID) -> tuple[Any, ...]:
    """(state, current_stage, halt_error_class, value_before) of a ramp."""
    row = conn.execute(
        "SELECT state, current_stage, halt_error_class, value_before FROM flag_ramps WHERE id = %s",
        (ramp_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def record_ramp_action_timeouts(conn: psycopg.Connection[Any]) -> None:
    """From now on, each ramp history row written also records, in ramp_action_timeouts,
    the lock and statement timeouts of the transaction writing it (as SHOW prints them):
    what an operator's ramp action really ran with."""
    conn.execute(
        "CREATE TABLE ramp_action_timeouts"
        " (id bigserial PRIMARY KEY, action text, lock_timeout text, statement_timeout text)"
    )
    conn.execute(
        # SECURITY DEFINER: the audit writes as its owner, whichever role the action runs as.
        "CREATE FUNCTION record_ramp_action_timeouts() RETURNS trigger LANGUAGE plpgsql"
        " SECURITY DEFINER AS $$"
        " BEGIN INSERT INTO ramp_action_timeouts (action, lock_timeout, statement_timeout)"
        " VALUES (NEW.action, current_setting('lock_timeout'),"
        " current_setting('statement_timeout')); RETURN NEW; END $$"
    )
    conn.execute(
        "CREATE TRIGGER record_ramp_action_timeouts AFTER INSERT ON flag_ramp_events"
        " FOR EACH ROW EXECUTE FUNCTION record_ramp_action_timeouts()"
    )


def ramp_action_timeouts(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
    """(action, lock_timeout, statement_timeout) of each ramp history row since
    record_ramp_action_timeouts, oldest first."""
    rows = conn.execute(
        "SELECT action, lock_timeout, statement_timeout FROM ramp_action_timeouts ORDER BY id"
    ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


def alerts(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The payloads of the alerts waiting in the outbox, oldest first."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT payload FROM notification_outbox WHERE kind = 'alert' ORDER BY id"
        )
    ]


API_ROLE = "flag_scheduler_api"


@contextmanager
def as_api_role(database_url: str) -> Iterator[str]:
    """The database as a role with exactly docs/api-role.sql's grants (a name of its own:
    roles are the server's, shared by parallel tests); yields its URL."""
    name = f"fs_api_{secrets.token_hex(5)}"
    password = secrets.token_hex(16)
    grants = (ROOT / "docs" / "api-role.sql").read_text().replace(API_ROLE, name)
    with psycopg.connect(database_url, autocommit=True) as owner:
        owner.execute(grants.encode())
        owner.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name), sql.Literal(password))
        )
        parts = urlsplit(database_url)
        host = parts.netloc.rpartition("@")[2]
        yield urlunsplit(parts._replace(netloc=f"{name}:{quote(password)}@{host}"))
        owner.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        owner.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
