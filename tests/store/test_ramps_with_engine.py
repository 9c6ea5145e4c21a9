"""Operator actions and the engine together: the hold clock stops while a ramp is paused,
a halted ramp resumes at its failed stage, an abort stops the rest (real PostgreSQL, the
real run with an injected clock)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from flag_scheduler.engine.ramp_rules import CheckedRamp, StagePlan
from flag_scheduler.engine.states import AlarmState, InsufficientData, RampState, State
from flag_scheduler.store.catalog import Catalog
from flag_scheduler.store.ramps import Ramps
from flag_scheduler_cli import fault_injection
from tests.support import T0, flag_fields, run_service

HOLD = timedelta(minutes=30)
ACTOR = "cli:alice"


@pytest.fixture
def ramps(conn: psycopg.Connection[Any]) -> Ramps:
    return Ramps(conn)


class Alarms:
    """Every guard alarm in one state the test sets."""

    def __init__(self) -> None:
        self.state = AlarmState.OK

    def alarm_states(self, names: Sequence[str]) -> dict[str, AlarmState]:
        return dict.fromkeys(names, self.state)


def start_ramp(
    ramps: Ramps, catalog: Catalog, *rollouts: int, guard_alarms: Sequence[str] = ()
) -> UUID:
    catalog.create_flag("checkout-v2", enabled=True)
    stages = tuple(
        StagePlan({"rollout_percentage": r}, int(HOLD.total_seconds())) for r in rollouts
    )
    ramp = ramps.create(
        catalog.get_flag("checkout-v2"),
        CheckedRamp(stages, None, ()),
        start=T0,
        guard_alarms=list(guard_alarms),
        rollback_on_alarm=bool(guard_alarms),
        insufficient_data=InsufficientData.WAIT,
        now=T0,
        actor=ACTOR,
    )
    return ramp.id


def applied(ramps: Ramps, ramp_id: UUID) -> list[tuple[int, Any]]:
    return [
        (s.stage, s.applied_at) for s in ramps.show(ramp_id).schedules if s.state == State.APPLIED
    ]


def test_the_hold_clock_stops_while_paused(
    ramps: Ramps, catalog: Catalog, database_url: str
) -> None:
    ramp_id = start_ramp(ramps, catalog, 5, 25, 50)
    run_service(database_url, T0)
    # ten minutes into stage 0's 30-minute hold, paused for two hours
    ramps.pause(ramp_id, now=T0 + timedelta(minutes=10), actor=ACTOR)
    assert run_service(database_url, T0 + HOLD).applied == 0  # paused: stage 1 does not run
    resumed_at = T0 + timedelta(hours=2)
    ramps.resume(ramp_id, now=resumed_at, actor=ACTOR)
    assert run_service(database_url, resumed_at + timedelta(minutes=19)).applied == 0
    due = resumed_at + timedelta(minutes=20)  # the 20 minutes the hold still had
    assert run_service(database_url, due).applied == 1
    assert applied(ramps, ramp_id) == [(0, T0), (1, due)]
    # and stage 2 is due its whole hold after stage 1 actually applied
    assert run_service(database_url, due + HOLD - timedelta(seconds=1)).applied == 0
    assert run_service(database_url, due + HOLD).applied == 1
    assert ramps.get(ramp_id).state == RampState.COMPLETED


def test_a_halted_ramp_resumes_at_its_failed_stage(
    ramps: Ramps, catalog: Catalog, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    ramp_id = start_ramp(ramps, catalog, 5, 25, 50)
    flag = catalog.get_flag("checkout-v2").id
    run_service(database_url, T0)
    fault_injection.set_fault(conn, flag, "22003", "numeric value out of range (injected)")
    run_service(database_url, T0 + HOLD)  # a data error: no retry, the ramp halts
    halted = ramps.get(ramp_id)
    assert (halted.state, halted.current_stage) == (RampState.HALTED, 1)
    assert run_service(database_url, T0 + 2 * HOLD).applied == 0  # no later stage
    fault_injection.clear_fault(conn, flag)
    now = T0 + timedelta(hours=3)
    ramps.resume(ramp_id, now=now, actor=ACTOR)
    assert run_service(database_url, now).applied == 1
    assert applied(ramps, ramp_id) == [(0, T0), (1, now)]
    assert flag_fields(conn, flag)["rollout_percentage"] == 25
    assert ramps.get(ramp_id).state == RampState.ACTIVE


def test_a_ramp_halted_by_an_alarm_with_rollback_resumes_by_applying_its_stage(
    ramps: Ramps, catalog: Catalog, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    ramp_id = start_ramp(ramps, catalog, 5, 25, 50, guard_alarms=["errors"])
    flag = catalog.get_flag("checkout-v2").id
    alarms = Alarms()
    run_service(database_url, T0, alarms=alarms)
    alarms.state = AlarmState.ALARM
    run_service(database_url, T0 + HOLD + timedelta(minutes=1), alarms=alarms)
    assert ramps.get(ramp_id).state == RampState.HALTED
    assert flag_fields(conn, flag)["rollout_percentage"] == 0  # rolled back
    alarms.state = AlarmState.OK
    now = T0 + timedelta(hours=3)
    ramps.resume(ramp_id, now=now, actor=ACTOR)
    summary = run_service(database_url, now, alarms=alarms)
    # the requeued stage is due now, after the rollback: applied, not superseded by it
    assert (summary.applied, summary.superseded) == (1, 0)
    assert applied(ramps, ramp_id) == [(0, T0), (1, now)]
    assert flag_fields(conn, flag)["rollout_percentage"] == 25


def test_abort_with_rollback_stops_the_ramp_and_restores_the_flag(
    ramps: Ramps, catalog: Catalog, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    ramp_id = start_ramp(ramps, catalog, 5, 25, 50)
    flag = catalog.get_flag("checkout-v2").id
    run_service(database_url, T0)
    run_service(database_url, T0 + HOLD)
    assert flag_fields(conn, flag)["rollout_percentage"] == 25
    now = T0 + HOLD + timedelta(minutes=5)
    _, rollback = ramps.abort(ramp_id, now=now, actor=ACTOR, rollback=True)
    assert rollback is not None
    assert ramps.get(ramp_id).value_before == {"enabled": True, "rollout_percentage": 0}
    run_service(database_url, now)
    assert flag_fields(conn, flag) == {"enabled": True, "rollout_percentage": 0}
    # stage 2 never comes
    assert run_service(database_url, now + 2 * HOLD).applied == 0
    assert [s for s, _ in applied(ramps, ramp_id)] == [0, 1]


def test_a_live_stage_of_an_aborted_ramp_is_cancelled_not_held(
    ramps: Ramps, catalog: Catalog, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    ramp_id = start_ramp(ramps, catalog, 5, 25)
    # what a race (or an old bulk retry) could leave: the ramp ended, its stage still due
    conn.execute(
        "UPDATE flag_ramps SET state = 'aborted', finished_at = %s WHERE id = %s", (T0, ramp_id)
    )
    summary = run_service(database_url, T0)
    assert summary.applied == 0
    [stage] = ramps.show(ramp_id).schedules
    assert stage.state == State.CANCELLED
    assert run_service(database_url, T0 + HOLD).claimed == 0  # nothing left due
    assert flag_fields(conn, catalog.get_flag("checkout-v2").id)["rollout_percentage"] == 0
