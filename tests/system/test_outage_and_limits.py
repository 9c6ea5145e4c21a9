"""Outage-aware runs, oversized or odd updates, idle transactions, and secrets kept out of text."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from flag_scheduler.aws import scheduler
from flag_scheduler.aws.settings import SchedulerSettings
from flag_scheduler.errors import DatabaseUnavailable, SystemicFailure
from flag_scheduler.store.catalog import Catalog
from flag_scheduler.store.repository import ScheduleRepository
from flag_scheduler_cli import fault_injection
from flag_scheduler_cli.local import FakeLambdaContext
from tests.support import T0, history, run_service, schedule_row
from tests.system import invariants


def test_a_streak_of_one_failure_across_flags_stops_the_run_without_charging_the_rest(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flags = [catalog.create_flag(f"flag-{i:02d}") for i in range(12)]
    schedules = [
        catalog.create_schedule(f, T0 - timedelta(seconds=i), {"enabled": True})
        for i, f in enumerate(flags)
    ]
    for flag in flags:
        fault_injection.set_fault(conn, flag, "40001", "outage")

    with pytest.raises(SystemicFailure) as caught:
        run_service(database_url, T0, outage_threshold=5)

    assert caught.value.error_class == "serialization_failure"
    assert caught.value.flags == 5
    assert caught.value.evidence[0] == "serialization_failure: outage"
    rows = [schedule_row(conn, s) for s in schedules]
    tried = [r for r in rows if r.status == "failed"]
    untried = [r for r in rows if r.status == "pending"]
    assert len(tried) == 5  # honest outcomes for what was tried
    assert all(r.retry_count == 1 for r in tried)
    assert len(untried) == 7
    assert all(r.retry_count == 0 for r in untried)  # not charged
    assert sum(len(history(conn, s)) for s in schedules) == 5


def _by_status_and_retries(conn: psycopg.Connection[Any]) -> dict[tuple[str, int], int]:
    return {
        (status, retry_count): count
        for status, retry_count, count in conn.execute(
            "SELECT status, retry_count, count(*) FROM feature_flag_schedules GROUP BY 1, 2"
        )
    }


def test_an_outage_over_500_schedules_fails_the_invocation_once_and_all_apply_afterwards(
    database_url: str,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    monkeypatch: pytest.MonkeyPatch,
    logs: io.StringIO,
) -> None:
    """Through the handler, at scale: what the streak test above shows on the engine, plus
    the one log line an alarm keys on, and the recovery."""
    invariants.install_audit(conn)
    now = datetime.now(UTC)
    flags = [catalog.create_flag(f"flag-{i:03d}") for i in range(500)]
    for i, flag in enumerate(flags):
        catalog.create_schedule(flag, now - timedelta(seconds=i + 1), {"rollout_percentage": 50})
        fault_injection.set_fault(conn, flag, "57014", "canceling statement due to failover")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("FLAG_SCHEDULE_OUTAGE_THRESHOLD", "5")

    with pytest.raises(SystemicFailure) as caught:
        scheduler.lambda_handler({}, FakeLambdaContext())

    assert caught.value.error_class == "statement_timeout"
    events = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    aborted = [e for e in events if e["message"] == "run_aborted_systemic"]
    assert len(aborted) == 1
    assert aborted[0]["flags"] == 5
    assert aborted[0]["evidence"][0].startswith("statement_timeout: canceling statement")
    assert _by_status_and_retries(conn) == {("failed", 1): 5, ("pending", 0): 495}

    for flag in flags:
        fault_injection.clear_fault(conn, flag)
    assert scheduler.lambda_handler({}, FakeLambdaContext())["applied"] == 495
    # The tried ones wait out their backoff (a few minutes), then apply too.
    later = now + timedelta(hours=1)
    assert run_service(database_url, later).applied == 5
    assert _by_status_and_retries(conn) == {("applied", 0): 495, ("applied", 1): 5}
    invariants.assert_consistent(conn, now=later)


def test_failures_of_mixed_classes_or_on_one_flag_are_not_an_outage(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    # Runs take flags in id order; alternate the error class in that order.
    flags = sorted(catalog.create_flag(f"flag-{i}") for i in range(6))
    for i, flag in enumerate(flags):
        catalog.create_schedule(flag, T0, {"enabled": True})
        fault_injection.set_fault(conn, flag, "40001" if i % 2 else "55P03")
    one = catalog.create_flag("one")
    for i in range(6):
        catalog.create_schedule(one, T0 - timedelta(seconds=i), {"rollout_percentage": i})
    fault_injection.set_fault(conn, one, "40P01")

    summary = run_service(database_url, T0, outage_threshold=3)

    assert summary.retried == 12


def test_a_threshold_of_zero_never_stops_a_run(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    for i in range(8):
        flag = catalog.create_flag(f"flag-{i}")
        catalog.create_schedule(flag, T0, {"enabled": True})
        fault_injection.set_fault(conn, flag, "40001")
    assert run_service(database_url, T0, outage_threshold=0).retried == 8


@pytest.mark.parametrize(
    ("updates", "reason"),
    [
        ({"enabled": True, "padding": "x" * 5000}, "bytes; the limit is 4096"),  # oversized
        ({"enabled": {"nested": True}}, "enabled: Input should be a valid boolean"),  # nested
        ({"rollout_percentage": [50]}, "rollout_percentage: Input should be a valid integer"),
        ([1, 2, 3], "updates must be a JSON object, got list"),  # not an object
        ("enabled", "updates must be a JSON object, got str"),
        (None, "updates must be a JSON object, got NoneType"),  # JSON null
        ({"rollout_percentage": 1e308}, "rollout_percentage: "),  # a 309-digit integer
    ],
)
def test_odd_updates_are_invalid_not_a_crash(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog, updates: Any, reason: str
) -> None:
    flag = catalog.create_flag("banner")
    bad = catalog.create_schedule(flag, T0, updates)
    good = catalog.create_schedule(catalog.create_flag("other"), T0, {"enabled": True})

    run_service(database_url, T0)

    row = schedule_row(conn, bad)
    assert (row.status, row.next_retry_at) == ("failed", None)
    assert row.last_error is not None
    assert row.last_error.startswith("invalid_updates: ")
    assert reason in row.last_error
    assert schedule_row(conn, good).status == "applied"


def _sit_idle_in_a_transaction(repository: ScheduleRepository) -> None:
    with repository.transaction(
        lock_timeout_ms=1000, statement_timeout_ms=1000, idle_in_transaction_timeout_ms=200
    ):
        repository.claim_due(T0, 10)
        time.sleep(0.6)  # a frozen invocation, holding its transaction open
        repository.claim_due(T0, 10)


def test_an_idle_transaction_is_ended_by_the_server(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        with pytest.raises(DatabaseUnavailable):
            _sit_idle_in_a_transaction(ScheduleRepository(conn))
        assert conn.broken


def test_the_database_url_never_shows_in_the_settings_repr() -> None:
    settings = SchedulerSettings.from_env({"DATABASE_URL": "postgresql://app:hunter2@db/flags"})
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)


def test_successes_between_failures_break_the_streak(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    # In id order (the order a run takes flags): fail, apply, fail, apply, fail, apply.
    flags = sorted(catalog.create_flag(f"flag-{i}") for i in range(6))
    for i, flag in enumerate(flags):
        catalog.create_schedule(flag, T0, {"enabled": True})
        if i % 2 == 0:
            fault_injection.set_fault(conn, flag, "40001")

    summary = run_service(database_url, T0, outage_threshold=3)

    assert (summary.retried, summary.applied) == (3, 3)
    assert (summary.batches, summary.claimed) == (1, 6)  # no early stop either


def test_a_document_no_decoder_can_read_fails_alone_and_stays_listable(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    # Valid JSONB under 4 KiB, nested ~2,000 deep: Python's decoder gives up on it. Claimed
    # first (oldest), it must fail on its own, not fail every claim forever.
    flag = catalog.create_flag("banner")
    deep = '{"enabled": true, "x": ' + "[" * 1990 + "]" * 1990 + "}"
    row = conn.execute(
        "INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates)"
        " VALUES (%s, %s, %s::jsonb) RETURNING id",
        (flag, T0 - timedelta(hours=1), deep),
    ).fetchone()
    assert row is not None
    good = catalog.create_schedule(catalog.create_flag("other"), T0, {"enabled": True})

    summary = run_service(database_url, T0)

    bad = schedule_row(conn, row[0])
    assert (bad.status, bad.last_error) == (
        "failed",
        "invalid_updates: updates cannot be decoded: RecursionError",
    )
    assert schedule_row(conn, good).status == "applied"
    assert (summary.applied, summary.failed_permanently) == (1, 1)
    listed = {s.id: s for s in catalog.schedules()}  # the operator can still see it
    assert isinstance(listed[row[0]].updates, str)


def test_a_failure_that_cannot_be_recorded_parks_that_schedule_and_the_rest_commits(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    broken = catalog.create_flag("broken")
    fine = catalog.create_flag("fine")
    stuck = catalog.create_schedule(broken, T0, {"enabled": True})
    applied = catalog.create_schedule(fine, T0, {"enabled": True})
    fault_injection.set_fault(conn, broken, "40001")
    # Recording its retry fails too (as a misbehaving trigger on the history would).
    conn.execute(
        "ALTER TABLE feature_flag_schedule_attempts ADD CONSTRAINT no_retries"
        " CHECK (outcome <> 'retry_scheduled')"
    )

    summary = run_service(database_url, T0)  # and it ends: no loop re-claiming `stuck`

    # Parked (0006): out of the queue as permanently failed, with no attempt charged.
    row = schedule_row(conn, stuck)
    assert (row.status, row.retry_count, row.next_retry_at) == ("failed", 0, None)
    assert row.last_error is not None
    assert row.last_error.startswith("unrecordable: its outcome could not be written")
    assert schedule_row(conn, applied).status == "applied"
    assert (summary.applied, summary.retried, summary.unrecordable, summary.batches) == (1, 0, 1, 1)
