"""Per-field ordering: the latest-scheduled applied change wins; late changes are superseded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg

from flag_scheduler.store.catalog import Catalog
from flag_scheduler_cli import fault_injection
from tests.support import T0, flag_fields, history, run_service, schedule_row


def test_a_late_retry_never_overwrites_a_field_a_later_change_set(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    early = catalog.create_schedule(flag, T0, {"enabled": True, "rollout_percentage": 10})
    fault_injection.set_fault(conn, flag, "40001")
    run_service(database_url, T0)  # early fails, waits for a retry
    fault_injection.clear_fault(conn, flag)
    later = catalog.create_schedule(flag, T0 + timedelta(seconds=30), {"enabled": False})
    run_service(database_url, T0 + timedelta(seconds=30))  # later applies
    due = schedule_row(conn, early).next_retry_at
    assert due is not None

    run_service(database_url, due)  # the retry of early comes after

    assert schedule_row(conn, later).status == "applied"
    assert schedule_row(conn, early).status == "applied"  # it still had rollout to set
    assert flag_fields(conn, flag) == {"enabled": False, "rollout_percentage": 10}


def test_a_change_with_nothing_left_to_set_is_superseded(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    catalog.create_schedule(flag, T0, {"enabled": True, "rollout_percentage": 100})
    run_service(database_url, T0)
    backfilled = catalog.create_schedule(flag, T0 - timedelta(minutes=5), {"enabled": False})

    summary = run_service(database_url, T0 + timedelta(minutes=1))

    row = schedule_row(conn, backfilled)
    assert (row.status, row.applied_at, row.next_retry_at) == ("superseded", None, None)
    assert summary.superseded == 1
    assert history(conn, backfilled) == [(1, "superseded", None)]
    assert flag_fields(conn, flag) == {"enabled": True, "rollout_percentage": 100}


def test_a_pending_change_between_two_applied_ones_never_overwrites_the_latest(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    """Kills the mutant whose supersede marks keep the earliest later-applied change."""
    flag = catalog.create_flag("banner")
    catalog.create_schedule(flag, T0 - timedelta(minutes=3), {"rollout_percentage": 10})
    catalog.create_schedule(flag, T0 - timedelta(minutes=1), {"rollout_percentage": 30})
    run_service(database_url, T0)  # both apply: 30 is the latest value
    # Backfilled: one change between the two applied ones, and one before both, which
    # takes the batch's look at applied changes back past the first of them.
    between = catalog.create_schedule(flag, T0 - timedelta(minutes=2), {"rollout_percentage": 20})
    before = catalog.create_schedule(flag, T0 - timedelta(minutes=4), {"enabled": True})

    summary = run_service(database_url, T0 + timedelta(minutes=1))

    assert flag_fields(conn, flag) == {"enabled": True, "rollout_percentage": 30}
    assert schedule_row(conn, between).status == "superseded"
    assert schedule_row(conn, before).status == "applied"  # nothing later set enabled
    assert (summary.claimed, summary.applied, summary.superseded) == (2, 1, 1)


def test_changes_due_in_one_batch_apply_in_scheduled_order(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    # Inserted newest first, so insertion order cannot be what makes this pass.
    catalog.create_schedule(flag, T0 - timedelta(minutes=1), {"rollout_percentage": 75})
    catalog.create_schedule(flag, T0 - timedelta(minutes=2), {"enabled": True})
    catalog.create_schedule(
        flag, T0 - timedelta(minutes=3), {"enabled": False, "rollout_percentage": 5}
    )

    run_service(database_url, T0)

    assert flag_fields(conn, flag) == {"enabled": True, "rollout_percentage": 75}


def test_a_tie_in_scheduled_time_is_broken_the_same_way_every_time(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    a = catalog.create_schedule(flag, T0, {"rollout_percentage": 1})
    b = catalog.create_schedule(flag, T0, {"rollout_percentage": 2})
    winner = 1 if str(a) > str(b) else 2  # ties go to the larger id

    run_service(database_url, T0)

    assert flag_fields(conn, flag)["rollout_percentage"] == winner


def test_other_environments_and_flags_are_independent(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    prod = catalog.create_flag("banner")
    staging = catalog.create_flag("banner", environment="staging")
    catalog.create_schedule(prod, T0, {"enabled": True})
    run_service(database_url, T0)
    older = catalog.create_schedule(staging, T0 - timedelta(hours=1), {"enabled": True})

    run_service(database_url, T0 + timedelta(minutes=1))

    assert schedule_row(conn, older).status == "applied"
    assert flag_fields(conn, staging)["enabled"] is True


def test_pending_future_and_cancelled_schedules_are_left_alone(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    future = catalog.create_schedule(flag, T0 + timedelta(seconds=1), {"enabled": True})
    cancelled = catalog.create_schedule(flag, T0, {"enabled": True})
    conn.execute(
        "UPDATE feature_flag_schedules SET status = 'cancelled' WHERE id = %s", (cancelled,)
    )

    summary = run_service(database_url, T0)

    assert summary.claimed == 0
    assert schedule_row(conn, future).status == "pending"
    assert schedule_row(conn, cancelled).status == "cancelled"
    assert flag_fields(conn, flag)["enabled"] is False
