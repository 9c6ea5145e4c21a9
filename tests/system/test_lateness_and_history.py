"""The lateness limit, and history rows that always agree with the schedule's state."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest

from flag_scheduler.aws import scheduler
from flag_scheduler.store.catalog import Catalog
from flag_scheduler_cli import fault_injection
from flag_scheduler_cli.local import FakeLambdaContext
from tests.support import T0, flag_fields, history, run_service, schedule_row

DAY = timedelta(days=1)


def test_a_first_attempt_past_the_lateness_limit_expires_instead_of_applying(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    on_time = catalog.create_schedule(flag, T0, {"rollout_percentage": 5})
    stale = catalog.create_schedule(flag, T0 - DAY - timedelta(seconds=1), {"enabled": True})

    summary = run_service(database_url, T0)

    row = schedule_row(conn, stale)
    assert (row.status, row.next_retry_at) == ("failed", None)
    assert row.last_error is not None
    assert row.last_error.startswith("expired: not applied within 86400 s of ")
    assert history(conn, stale) == [(1, "expired", "expired")]
    assert schedule_row(conn, on_time).status == "applied"
    assert flag_fields(conn, flag) == {"enabled": False, "rollout_percentage": 5}
    assert (summary.failed_permanently, summary.expired) == (1, 1)


def test_exactly_at_the_limit_still_applies(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    schedule = catalog.create_schedule(flag, T0 - DAY, {"enabled": True})
    run_service(database_url, T0)
    assert schedule_row(conn, schedule).status == "applied"


def test_a_retry_past_the_lateness_limit_expires(
    database_url: str,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flag = catalog.create_flag("banner")
    schedule = catalog.create_schedule(flag, T0, {"enabled": True})
    fault_injection.set_fault(conn, flag, "40001")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("FLAG_SCHEDULE_MAX_LATENESS_SECONDS", "300")  # 5 minutes
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    scheduler.run_invocation(FakeLambdaContext(aws_request_id="req-1"), clock=lambda: T0)
    fault_injection.clear_fault(conn, flag)

    # The retry came due at ~2 minutes, but no run happened until 6 minutes.
    late = T0 + timedelta(minutes=6)
    scheduler.run_invocation(FakeLambdaContext(aws_request_id="req-2"), clock=lambda: late)

    row = schedule_row(conn, schedule)
    assert (row.status, row.retry_count, row.next_retry_at) == ("failed", 1, None)
    assert history(conn, schedule) == [
        (1, "retry_scheduled", "serialization_failure"),
        (2, "expired", "expired"),
    ]
    request_ids = [
        r[0]
        for r in conn.execute(
            "SELECT request_id FROM feature_flag_schedule_attempts WHERE schedule_id = %s"
            " ORDER BY id",
            (schedule,),
        )
    ]
    assert request_ids == ["req-1", "req-2"]
    assert flag_fields(conn, flag)["enabled"] is False


def test_zero_turns_the_lateness_limit_off(
    database_url: str,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flag = catalog.create_flag("banner")
    schedule = catalog.create_schedule(flag, T0 - 30 * DAY, {"enabled": True})
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("FLAG_SCHEDULE_MAX_LATENESS_SECONDS", "0")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")

    scheduler.run_invocation(FakeLambdaContext(), clock=lambda: T0)

    assert schedule_row(conn, schedule).status == "applied"


def test_history_and_state_never_disagree_when_history_cannot_be_written(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    # A history row that fails to insert must undo the outcome it would have recorded.
    conn.execute(
        "ALTER TABLE feature_flag_schedule_attempts ADD CONSTRAINT no_applied"
        " CHECK (outcome <> 'applied')"
    )
    flag = catalog.create_flag("banner")
    schedule = catalog.create_schedule(flag, T0, {"enabled": True})

    run_service(database_url, T0)

    row = schedule_row(conn, schedule)
    assert row.status == "failed"  # the apply was rolled back with its history row
    assert flag_fields(conn, flag)["enabled"] is False
    assert history(conn, schedule) == [(1, "failed_permanently", "integrity_error")]


def test_a_successful_run_is_remembered(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    catalog.create_schedule(flag, T0, {"enabled": True})

    run_service(database_url, T0)

    row = conn.execute(
        "SELECT last_run_started_at, last_summary FROM scheduler_run_state"
    ).fetchone()
    assert row is not None
    assert row[0] == T0
    assert row[1]["applied"] == 1
