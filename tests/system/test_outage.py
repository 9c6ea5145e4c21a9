"""A systemic outage over 500 due schedules: the run stops after the threshold without
charging the rest, and everything applies once the fault is gone."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from flag_scheduler.aws import scheduler
from flag_scheduler.errors import SystemicFailure
from flag_scheduler.store.catalog import Catalog
from flag_scheduler_cli import fault_injection
from flag_scheduler_cli.local import FakeLambdaContext
from tests.support import run_service
from tests.system import invariants

SCHEDULES = 500
THRESHOLD = 5


def _counts(conn: psycopg.Connection[Any]) -> dict[tuple[str, int], int]:
    return {
        (status, retry_count): count
        for status, retry_count, count in conn.execute(
            "SELECT status, retry_count, count(*) FROM feature_flag_schedules GROUP BY 1, 2"
        )
    }


def test_500_due_schedules_in_an_outage_spend_no_retries_and_all_apply_afterwards(
    database_url: str,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    monkeypatch: pytest.MonkeyPatch,
    logs: io.StringIO,
) -> None:
    invariants.install_audit(conn)
    now = datetime.now(UTC)
    flags = [catalog.create_flag(f"flag-{i:03d}") for i in range(SCHEDULES)]
    for i, flag in enumerate(flags):
        catalog.create_schedule(flag, now - timedelta(seconds=i + 1), {"rollout_percentage": 50})
        fault_injection.set_fault(conn, flag, "57014", "canceling statement due to failover")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("FLAG_SCHEDULE_OUTAGE_THRESHOLD", str(THRESHOLD))

    with pytest.raises(SystemicFailure) as caught:
        scheduler.lambda_handler({}, FakeLambdaContext())

    assert (caught.value.error_class, caught.value.flags) == ("statement_timeout", THRESHOLD)
    events = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    aborted = [e for e in events if e["message"] == "run_aborted_systemic"]
    assert len(aborted) == 1
    assert aborted[0]["flags"] == THRESHOLD
    assert aborted[0]["evidence"][0].startswith("statement_timeout: canceling statement")
    # Honest outcomes for the ones tried; the rest untouched and uncharged.
    assert _counts(conn) == {("failed", 1): THRESHOLD, ("pending", 0): SCHEDULES - THRESHOLD}
    attempts = conn.execute("SELECT count(*) FROM feature_flag_schedule_attempts").fetchone()
    assert attempts == (THRESHOLD,)

    for flag in flags:
        fault_injection.clear_fault(conn, flag)
    result = scheduler.lambda_handler({}, FakeLambdaContext())

    assert result["applied"] == SCHEDULES - THRESHOLD
    # The tried ones wait out their backoff (a few minutes), then apply too.
    later = now + timedelta(hours=1)
    assert run_service(database_url, later).applied == THRESHOLD
    assert _counts(conn) == {("applied", 0): SCHEDULES - THRESHOLD, ("applied", 1): THRESHOLD}
    invariants.assert_consistent(conn, now=later)
