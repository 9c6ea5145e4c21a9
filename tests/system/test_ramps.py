"""Ramps on PostgreSQL with an injected clock: each stage creates its successor in the
transaction that applies it, due its hold after the application; retries hold the ramp;
a permanent failure or an expiry halts it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg

from flag_scheduler.store.catalog import Catalog
from flag_scheduler_cli import fault_injection
from tests.support import T0, flag_fields, insert_ramp, ramp_stages, ramp_state, run_service

HOLD = timedelta(minutes=10)


def test_each_stage_is_due_its_hold_after_the_previous_one_was_applied(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout")
    ramp = insert_ramp(conn, flag, T0, [5, 25, 100], end_updates={"enabled": True})
    late = T0 + timedelta(minutes=7)  # the first run comes 7 minutes late
    run_service(database_url, late)
    stages = ramp_stages(conn, ramp)
    assert [row[:2] for row in stages] == [(0, "applied"), (1, "pending")]
    assert stages[1][2] == late + HOLD  # from the application, not from T0 + hold
    assert ramp_state(conn, ramp)[:2] == ("active", 1)
    assert ramp_state(conn, ramp)[3] == {"enabled": False, "rollout_percentage": 0}

    run_service(database_url, late + HOLD - timedelta(seconds=1))  # not yet
    assert len(ramp_stages(conn, ramp)) == 2
    for step in range(1, 4):
        run_service(database_url, late + HOLD * step)
    stages = ramp_stages(conn, ramp)
    assert [row[:2] for row in stages] == [(k, "applied") for k in range(4)]
    assert [row[2] for row in stages[1:]] == [late + HOLD * k for k in range(1, 4)]
    assert ramp_state(conn, ramp)[0] == "completed"
    assert flag_fields(conn, flag) == {"enabled": True, "rollout_percentage": 100}


def test_a_stage_retry_holds_the_ramp_and_moves_the_next_stage(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout")
    ramp = insert_ramp(conn, flag, T0, [5, 25, 50])
    run_service(database_url, T0)
    second = conn.execute(
        "SELECT id FROM feature_flag_schedules WHERE ramp_id = %s AND ramp_stage = 1", (ramp,)
    ).fetchone()
    assert second is not None
    fault_injection.fail_attempt(conn, second[0], 1, "40001")
    run_service(database_url, T0 + HOLD)
    stages = ramp_stages(conn, ramp)
    assert [row[:2] for row in stages] == [(0, "applied"), (1, "failed")]  # waiting, no stage 2
    retry_at = conn.execute(
        "SELECT next_retry_at FROM feature_flag_schedules WHERE id = %s", (second[0],)
    ).fetchone()
    assert retry_at is not None
    run_service(database_url, retry_at[0])
    stages = ramp_stages(conn, ramp)
    assert [row[:2] for row in stages] == [(0, "applied"), (1, "applied"), (2, "pending")]
    assert stages[2][2] == retry_at[0] + HOLD


def test_a_stage_that_fails_for_good_halts_the_ramp_with_one_alert(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout")
    ramp = insert_ramp(conn, flag, T0, [5, 25, 50])
    run_service(database_url, T0)
    # A stage whose flag update the database refuses as bad data: permanent at once.
    fault_injection.set_fault(conn, flag, "22003", "numeric value out of range")
    run_service(database_url, T0 + HOLD)
    state, current, error_class, _ = ramp_state(conn, ramp)
    assert (state, current, error_class) == ("halted", 1, "data_error")
    assert [row[:2] for row in ramp_stages(conn, ramp)] == [(0, "applied"), (1, "failed")]
    fault_injection.clear_fault(conn, flag)
    run_service(database_url, T0 + HOLD * 5)
    assert len(ramp_stages(conn, ramp)) == 2  # no later stage, ever


def test_an_expired_stage_halts_the_ramp(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout")
    ramp = insert_ramp(conn, flag, T0, [5, 25])
    run_service(database_url, T0 + timedelta(hours=2), max_lateness_seconds=3600)
    assert ramp_state(conn, ramp)[:3] == ("halted", 0, "expired")
    assert flag_fields(conn, flag)["rollout_percentage"] == 0
