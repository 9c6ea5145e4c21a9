"""No statement outlives the invocation: its timeout is cut to the time left minus the margin."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from flag_scheduler.engine.notifier import NullNotifier
from flag_scheduler.engine.run_loop import RunPolicy, process_due_schedules
from flag_scheduler.store.catalog import Catalog
from flag_scheduler.store.repository import ScheduleRepository
from tests.support import history, schedule_row

BUDGET_MS = 5_000
MARGIN_MS = 2_000


def test_a_slow_statement_is_cut_short_before_the_invocation_runs_out(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    now = datetime.now(UTC)
    flag = catalog.create_flag("banner")
    schedule = catalog.create_schedule(flag, now - timedelta(minutes=1), {"enabled": True})
    # Writing the flag takes a minute: far longer than the invocation has left.
    conn.execute(
        "CREATE FUNCTION slow_flag_write() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN PERFORM pg_sleep(60); RETURN NEW; END $$"
    )
    conn.execute(
        "CREATE TRIGGER slow_flag_write BEFORE UPDATE ON feature_flags"
        " FOR EACH ROW EXECUTE FUNCTION slow_flag_write()"
    )
    # The default StatementTimeoutMs (30 s) is six times the 5 s this invocation has left.
    policy = RunPolicy(
        statement_timeout_ms=30_000, lock_timeout_ms=30_000, time_margin_ms=MARGIN_MS
    )
    # The Lambda context's countdown: real time, since the server's wait is real.
    started = time.monotonic()

    def remaining_ms() -> int:
        return BUDGET_MS - round((time.monotonic() - started) * 1000)

    with psycopg.connect(database_url, autocommit=True) as run_conn:
        summary = process_due_schedules(
            ScheduleRepository(run_conn),
            NullNotifier(),
            clock=lambda: now,
            remaining_ms=remaining_ms,
            policy=policy,
        )
    elapsed_ms = (time.monotonic() - started) * 1000
    print(f"returned after {elapsed_ms:.0f} ms: {summary.as_dict()}")  # pytest -rP shows it

    # Returned before the invocation's time ran out, at about budget - margin.
    assert elapsed_ms < BUDGET_MS, elapsed_ms
    assert summary.stopped_for_time
    assert (summary.claimed, summary.applied, summary.retried) == (1, 0, 0)
    # The cancelled write was rolled back and nobody is charged for it: still due.
    row = schedule_row(conn, schedule)
    assert (row.status, row.retry_count, row.next_retry_at) == ("pending", 0, None)
    assert history(conn, schedule) == []
