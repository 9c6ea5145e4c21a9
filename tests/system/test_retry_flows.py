"""Retries with real injected database failures: windows, exhaustion, permanence, isolation."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from flag_scheduler.engine.backoff import BackoffPolicy, retry_delay
from flag_scheduler.engine.notifier import NullNotifier
from flag_scheduler.engine.run_loop import RunPolicy, process_due_schedules
from flag_scheduler.store.catalog import Catalog
from flag_scheduler.store.repository import ScheduleRepository
from flag_scheduler_cli import fault_injection
from tests.support import T0, flag_fields, history, run_service, schedule_row

TRANSIENT = [
    ("40001", "serialization_failure"),
    ("40P01", "deadlock"),
    ("55P03", "lock_timeout"),
    ("57014", "statement_timeout"),
    ("XX000", "unknown"),
]


@pytest.mark.parametrize(("sqlstate", "error_class"), TRANSIENT)
def test_a_transient_failure_schedules_a_retry_in_the_backoff_window(
    database_url: str,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    sqlstate: str,
    error_class: str,
) -> None:
    flag = catalog.create_flag("checkout")
    schedule = catalog.create_schedule(flag, T0, {"enabled": True})
    fault_injection.set_fault(conn, flag, sqlstate, "boom")

    summary = run_service(database_url, T0)

    row = schedule_row(conn, schedule)
    assert (row.status, row.retry_count) == ("failed", 1)
    assert row.last_error == f"{error_class}: boom"
    assert row.next_retry_at is not None
    assert T0 + timedelta(seconds=120) <= row.next_retry_at <= T0 + timedelta(seconds=150)
    assert row.next_retry_at == T0 + retry_delay(BackoffPolicy(), 0, schedule)
    assert (summary.retried, summary.applied, summary.failed_permanently) == (1, 0, 0)
    assert flag_fields(conn, flag) == {"enabled": False, "rollout_percentage": 0}
    assert history(conn, schedule) == [(1, "retry_scheduled", error_class)]
    last_class = conn.execute(
        "SELECT last_error_class FROM feature_flag_schedules WHERE id = %s", (schedule,)
    ).fetchone()
    assert last_class == (error_class,)


def test_a_retry_is_not_attempted_before_it_is_due(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout")
    schedule = catalog.create_schedule(flag, T0, {"enabled": True})
    fault_injection.set_fault(conn, flag, "40001")
    run_service(database_url, T0)
    fault_injection.clear_fault(conn, flag)
    due = schedule_row(conn, schedule).next_retry_at
    assert due is not None

    early = run_service(database_url, due - timedelta(microseconds=1))

    assert early.claimed == 0
    assert schedule_row(conn, schedule).status == "failed"


def test_a_successful_retry_applies_and_clears_retry_metadata(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout")
    schedule = catalog.create_schedule(flag, T0, {"enabled": True, "rollout_percentage": 40})
    fault_injection.set_fault(conn, flag, "40P01")
    run_service(database_url, T0)
    fault_injection.clear_fault(conn, flag)
    due = schedule_row(conn, schedule).next_retry_at
    assert due is not None

    summary = run_service(database_url, due)

    row = schedule_row(conn, schedule)
    assert (row.status, row.retry_count, row.next_retry_at, row.last_error) == (
        "applied",
        1,
        None,
        None,
    )
    assert row.applied_at == due
    assert (summary.applied, summary.retry_succeeded) == (1, 1)
    assert flag_fields(conn, flag) == {"enabled": True, "rollout_percentage": 40}
    assert history(conn, schedule) == [(1, "retry_scheduled", "deadlock"), (2, "applied", None)]


def _fail_until_permanent(
    database_url: str, conn: psycopg.Connection[Any], schedule: Any, **run: Any
) -> list[Any]:
    """Run at every retry time until the schedule stops waiting; returns the run times."""
    times = [T0]
    run_service(database_url, T0, **run)
    while (row := schedule_row(conn, schedule)).next_retry_at is not None:
        times.append(row.next_retry_at)
        run_service(database_url, row.next_retry_at, **run)
        assert len(times) < 20
    return times


def test_exhausted_retries_make_the_schedule_permanently_failed(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout")
    schedule = catalog.create_schedule(flag, T0, {"enabled": True})
    fault_injection.set_fault(conn, flag, "55P03", "still locked")

    times = _fail_until_permanent(database_url, conn, schedule, max_retries=3)

    row = schedule_row(conn, schedule)
    assert len(times) == 4  # 1 + max_retries attempts
    assert (row.status, row.retry_count, row.next_retry_at) == ("failed", 3, None)
    assert row.last_error == "lock_timeout: still locked"
    assert history(conn, schedule) == [
        (1, "retry_scheduled", "lock_timeout"),
        (2, "retry_scheduled", "lock_timeout"),
        (3, "retry_scheduled", "lock_timeout"),
        (4, "failed_permanently", "lock_timeout"),
    ]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for n, gap in enumerate(gaps):  # 2, 4, 8 minutes plus at most 30 s jitter
        assert timedelta(minutes=2 * 2**n) <= gap <= timedelta(minutes=2 * 2**n, seconds=30)
    # Permanently failed schedules are never claimed again.
    assert run_service(database_url, T0 + timedelta(days=30)).claimed == 0


def test_max_retries_zero_fails_on_the_first_failure(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout")
    schedule = catalog.create_schedule(flag, T0, {"enabled": True})
    fault_injection.set_fault(conn, flag, "40001")

    summary = run_service(database_url, T0, max_retries=0)

    row = schedule_row(conn, schedule)
    assert (row.status, row.retry_count, row.next_retry_at) == ("failed", 0, None)
    assert summary.failed_permanently == 1
    assert history(conn, schedule) == [(1, "failed_permanently", "serialization_failure")]


def test_per_schedule_max_retries_overrides_the_setting(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout")
    generous = catalog.create_schedule(flag, T0, {"enabled": True}, max_retries=5)
    other = catalog.create_flag("search")
    strict = catalog.create_schedule(other, T0, {"enabled": True}, max_retries=0)
    fault_injection.set_fault(conn, flag, "40001")
    fault_injection.set_fault(conn, other, "40001")

    times = _fail_until_permanent(database_url, conn, generous, max_retries=1)

    assert len(times) == 6
    assert schedule_row(conn, generous).retry_count == 5
    assert schedule_row(conn, strict).retry_count == 0
    assert schedule_row(conn, strict).next_retry_at is None


def test_the_environment_variable_sets_the_limit(
    database_url: str,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flag_scheduler.aws import scheduler
    from flag_scheduler_cli.local import FakeLambdaContext

    flag = catalog.create_flag("checkout")
    schedule = catalog.create_schedule(flag, T0, {"enabled": True})
    fault_injection.set_fault(conn, flag, "40001")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("FLAG_SCHEDULE_MAX_RETRIES", "1")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")

    scheduler.run_invocation(FakeLambdaContext(), clock=lambda: T0)
    due = schedule_row(conn, schedule).next_retry_at
    assert due is not None
    scheduler.run_invocation(FakeLambdaContext(), clock=lambda: due)

    row = schedule_row(conn, schedule)
    assert (row.status, row.retry_count, row.next_retry_at) == ("failed", 1, None)


@pytest.mark.parametrize(
    ("updates", "reason"),
    [
        ({}, "at least one of enabled, rollout_percentage"),  # empty
        ({"enabled": True, "colour": "red"}, "colour: unknown key"),  # unknown key
        ({"enabled": "yes"}, "enabled: Input should be a valid boolean"),  # wrong type
        ({"rollout_percentage": 101}, "less than or equal to 100"),  # out of range
    ],
)
def test_invalid_updates_fail_at_once_while_neighbours_apply(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog, updates: Any, reason: str
) -> None:
    flags = [catalog.create_flag(f"flag-{i}") for i in range(3)]
    before = catalog.create_schedule(flags[0], T0, {"enabled": True})
    bad = catalog.create_schedule(flags[1], T0, updates)
    after = catalog.create_schedule(flags[2], T0, {"rollout_percentage": 30})

    summary = run_service(database_url, T0)

    row = schedule_row(conn, bad)
    assert (row.status, row.retry_count, row.next_retry_at) == ("failed", 0, None)
    assert row.last_error is not None
    assert row.last_error.startswith("invalid_updates: ")
    assert reason in row.last_error
    assert schedule_row(conn, before).status == "applied"
    assert schedule_row(conn, after).status == "applied"
    assert (summary.applied, summary.failed_permanently, summary.retried) == (2, 1, 0)
    assert flag_fields(conn, flags[1]) == {"enabled": False, "rollout_percentage": 0}
    assert history(conn, bad) == [(1, "failed_permanently", "invalid_updates")]
    assert history(conn, before) == [(1, "applied", None)]


def test_a_transient_failure_does_not_roll_back_its_neighbours(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flags = [catalog.create_flag(f"flag-{i}") for i in range(5)]
    schedules = [catalog.create_schedule(f, T0, {"enabled": True}) for f in flags]
    fault_injection.set_fault(conn, flags[2], "40001")

    run_service(database_url, T0)

    statuses = [schedule_row(conn, s).status for s in schedules]
    assert statuses == ["applied", "applied", "failed", "applied", "applied"]


def test_an_integrity_error_is_permanent(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout")
    schedule = catalog.create_schedule(flag, T0, {"enabled": True})
    fault_injection.set_fault(conn, flag, "23514", "violates check")

    run_service(database_url, T0)

    row = schedule_row(conn, schedule)
    assert (row.status, row.retry_count, row.next_retry_at) == ("failed", 0, None)
    assert row.last_error == "integrity_error: violates check"
    assert history(conn, schedule) == [(1, "failed_permanently", "integrity_error")]


def test_a_retry_due_across_midnight_utc(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    late = T0.replace(hour=23, minute=59, second=0)
    flag = catalog.create_flag("checkout")
    schedule = catalog.create_schedule(flag, late, {"enabled": True})
    fault_injection.set_fault(conn, flag, "40001")
    run_service(database_url, late)
    due = schedule_row(conn, schedule).next_retry_at
    assert due is not None
    assert due.date() == (late + timedelta(days=1)).date()
    fault_injection.clear_fault(conn, flag)

    run_service(database_url, due)

    assert schedule_row(conn, schedule).status == "applied"


def test_a_run_processes_more_than_one_batch(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flags = [catalog.create_flag(f"flag-{i}") for i in range(25)]
    for i, flag in enumerate(flags):
        catalog.create_schedule(flag, T0 - timedelta(seconds=i), {"rollout_percentage": i})

    summary = run_service(database_url, T0, batch_size=10)

    assert (summary.batches, summary.applied) == (3, 25)


def test_no_work_starts_when_the_time_budget_is_below_the_margin(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout")
    schedule = catalog.create_schedule(flag, T0, {"enabled": True})

    summary = run_service(database_url, T0, remaining_ms=lambda: 999)

    assert summary.stopped_for_time
    assert summary.claimed == 0
    assert schedule_row(conn, schedule).status == "pending"


def test_time_running_out_between_batches_leaves_the_rest_due(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flags = [catalog.create_flag(f"flag-{i}") for i in range(10)]
    for flag in flags:
        catalog.create_schedule(flag, T0, {"enabled": True})
    budget = iter([60_000] + [0] * 100)  # enough for one batch, then none left

    summary = run_service(database_url, T0, batch_size=4, remaining_ms=lambda: next(budget))

    assert summary.stopped_for_time
    assert (summary.batches, summary.applied) == (1, 4)
    statuses = [r[0] for r in conn.execute("SELECT status FROM feature_flag_schedules")]
    assert sorted(statuses) == ["applied"] * 4 + ["pending"] * 6
    assert run_service(database_url, T0).applied == 6


def test_time_running_out_in_the_per_schedule_fallback_leaves_the_rest_due(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flags = [catalog.create_flag(f"flag-{i}") for i in range(10)]
    for flag in flags:
        catalog.create_schedule(flag, T0, {"enabled": True})
    # One poisoned flag makes the batch's bulk write fail: it falls back to one savepoint
    # per schedule, which checks the time before each.
    fault_injection.set_fault(conn, flags[0], "40001")
    budget = iter([60_000] * 4 + [0] * 100)  # the run, then 3 schedules

    summary = run_service(database_url, T0, batch_size=10, remaining_ms=lambda: next(budget))

    assert summary.stopped_for_time
    statuses = [r[0] for r in conn.execute("SELECT status FROM feature_flag_schedules")]
    assert statuses.count("pending") == 7
    assert summary.applied + summary.retried == 3


def test_the_per_schedule_fallback_stops_at_the_time_margin_not_at_zero(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    """Kills the mutant that weakens the fallback's time check to `remaining <= 0`."""
    flags = [catalog.create_flag(f"flag-{i}") for i in range(10)]
    for flag in flags:
        catalog.create_schedule(flag, T0, {"enabled": True})
    fault_injection.set_fault(conn, flags[0], "40001")  # the bulk write fails: fallback
    # run_service's margin is 1 s. The run starts with a minute; in the fallback the time
    # left crosses the margin after three schedules, yet never reaches zero.
    budget = itertools.chain([60_000, 3_000, 2_000, 1_000], itertools.repeat(999))

    summary = run_service(database_url, T0, batch_size=10, remaining_ms=lambda: next(budget))

    statuses = [r[0] for r in conn.execute("SELECT status FROM feature_flag_schedules")]
    assert statuses.count("pending") == 7, statuses
    assert summary.applied + summary.retried == 3
    assert summary.stopped_for_time


def test_a_retry_is_timed_from_the_failure_not_from_the_batch_start(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout")
    schedule = catalog.create_schedule(flag, T0, {"enabled": True})
    fault_injection.set_fault(conn, flag, "55P03")
    ticks = itertools.count()
    policy = RunPolicy(backoff=BackoffPolicy(jitter_seconds=0), time_margin_ms=1)
    with psycopg.connect(database_url, autocommit=True) as scheduler:
        process_due_schedules(
            ScheduleRepository(scheduler),
            NullNotifier(),
            clock=lambda: T0 + timedelta(seconds=next(ticks)),  # each reading 1 s later
            remaining_ms=lambda: 60_000,
            policy=policy,
        )

    started = conn.execute(
        "SELECT started_at FROM feature_flag_schedule_attempts WHERE schedule_id = %s",
        (schedule,),
    ).fetchone()
    row = schedule_row(conn, schedule)
    assert started is not None
    assert row.next_retry_at is not None
    # The batch started at `started`; the failure was noticed later, and counts from then.
    assert row.next_retry_at - started[0] > timedelta(seconds=120)
