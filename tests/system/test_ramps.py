"""Ramps on PostgreSQL with an injected clock: each stage creates its successor in the
transaction that applies it, due its hold after the application; retries hold the ramp;
a permanent failure or an expiry halts it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg

from flag_scheduler.engine.backoff import BackoffPolicy
from flag_scheduler.engine.notifier import NullNotifier
from flag_scheduler.engine.run_loop import RunPolicy, process_due_schedules
from flag_scheduler.engine.states import MessageKind
from flag_scheduler.store.catalog import Catalog
from flag_scheduler.store.repository import ScheduleRepository
from flag_scheduler_cli import fault_injection
from tests.support import (
    T0,
    ReadingsClock,
    alerts,
    flag_fields,
    insert_ramp,
    ramp_stages,
    ramp_state,
    run_service,
)

HOLD = timedelta(minutes=10)
ALERTS = frozenset({MessageKind.ALERT})


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


class _CommitReadings(ScheduleRepository):
    """Records the clock's last reading when each transaction commits."""

    def __init__(self, conn: psycopg.Connection[Any], clock: ReadingsClock) -> None:
        super().__init__(conn)
        self.clock = clock
        self.commits: list[Any] = []

    @contextmanager
    def transaction(self, **timeouts: int) -> Iterator[None]:
        with super().transaction(**timeouts):
            yield
        self.commits.append(self.clock.readings[-1])


def test_the_next_stage_is_held_from_the_last_clock_reading_before_its_batch_commits(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    first, second = sorted([catalog.create_flag("checkout"), catalog.create_flag("search")])
    ramp = insert_ramp(conn, first, T0, [5, 25])
    # A schedule after the stage in the batch whose attempt fails: the batch goes one
    # savepoint each, and reads the clock again after the stage was written.
    other = catalog.create_schedule(second, T0, {"enabled": True})
    fault_injection.fail_attempt(conn, other, 1, "22P02")
    clock = ReadingsClock(T0)
    policy = RunPolicy(
        max_retries=3,
        batch_size=100,
        time_margin_ms=1_000,
        backoff=BackoffPolicy(),
        lock_timeout_ms=2_000,
        outage_threshold=5,
        statement_timeout_ms=10_000,
        max_lateness_seconds=86_400,
    )
    with psycopg.connect(database_url, autocommit=True) as run_conn:
        store = _CommitReadings(run_conn, clock)
        process_due_schedules(
            store, NullNotifier(), clock=clock, remaining_ms=lambda: 60_000, policy=policy
        )
    stages = ramp_stages(conn, ramp)
    assert [row[:2] for row in stages] == [(0, "applied"), (1, "pending")]
    assert stages[1][2] == store.commits[0] + HOLD


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
    run_service(database_url, T0 + HOLD, queue=ALERTS)
    state, current, error_class, _ = ramp_state(conn, ramp)
    assert (state, current, error_class) == ("halted", 1, "data_error")
    assert [row[:2] for row in ramp_stages(conn, ramp)] == [(0, "applied"), (1, "failed")]
    fault_injection.clear_fault(conn, flag)
    run_service(database_url, T0 + HOLD * 5, queue=ALERTS)
    assert len(ramp_stages(conn, ramp)) == 2  # no later stage, ever
    (alert,) = alerts(conn)
    assert (alert["ramp_id"], alert["stage"], alert["error_class"]) == (str(ramp), 1, "data_error")
    assert "numeric value out of range" in alert["last_error"]


def test_an_expired_stage_halts_the_ramp(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout")
    ramp = insert_ramp(conn, flag, T0, [5, 25])
    run_service(database_url, T0 + timedelta(hours=2), max_lateness_seconds=3600, queue=ALERTS)
    assert ramp_state(conn, ramp)[:3] == ("halted", 0, "expired")
    (alert,) = alerts(conn)
    assert (alert["ramp_id"], alert["stage"], alert["error_class"]) == (str(ramp), 0, "expired")
    assert flag_fields(conn, flag)["rollout_percentage"] == 0
