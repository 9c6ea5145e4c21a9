"""Helpers the tests share: URLs, running the service with a chosen clock, reading rows."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import psycopg

from flag_scheduler.engine.backoff import BackoffPolicy
from flag_scheduler.engine.notifier import NullNotifier
from flag_scheduler.engine.records import RunSummary
from flag_scheduler.engine.run_loop import RunPolicy, process_due_schedules
from flag_scheduler.store.repository import ScheduleRepository

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def database_url_for(server_url: str, database: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


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
) -> RunSummary:
    """One scheduler run on its own connection, with the clock stopped at `now`."""
    policy = RunPolicy(
        max_retries=max_retries,
        batch_size=batch_size,
        time_margin_ms=1_000,
        backoff=backoff or BackoffPolicy(),
        lock_timeout_ms=lock_timeout_ms,
        outage_threshold=outage_threshold,
        statement_timeout_ms=10_000,
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        return process_due_schedules(
            ScheduleRepository(conn),
            NullNotifier(),
            clock=lambda: now,
            remaining_ms=remaining_ms or (lambda: 60_000),
            policy=policy,
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
