"""Ramps as operators create and steer them (store/ramps.py), on the real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg.types.json import Jsonb

from flag_scheduler.engine.ramp_rules import CheckedRamp, StagePlan
from flag_scheduler.engine.states import InsufficientData, RampAction, RampState, State
from flag_scheduler.errors import NotFound, StateConflict, TransientDatabaseError
from flag_scheduler.store import sql
from flag_scheduler.store.api_catalog import ApiCatalog, RequeueFilter, WriteTimeouts
from flag_scheduler.store.catalog import Catalog, FlagView
from flag_scheduler.store.ramps import Ramps, RampView
from tests.support import T0

ACTOR = "cli:alice"


# A stage refused as a plain schedule names its ramp's actions, in the CLI and the API.
_THROUGH_THE_RAMP = (
    r"is stage 0 of ramp (\S+); .*`flag-scheduler ramps pause\|resume\|abort \1`,"
    r" or POST /ramps/\1/pause\|resume\|abort$"
)


def checked(*rollouts: int, hold: int = 600, end: dict[str, Any] | None = None) -> CheckedRamp:
    stages = tuple(StagePlan({"rollout_percentage": r}, hold) for r in rollouts)
    return CheckedRamp(stages=stages, end_updates=end, warnings=())


@pytest.fixture
def ramps(conn: psycopg.Connection[Any]) -> Ramps:
    return Ramps(conn)


@pytest.fixture
def flag(catalog: Catalog) -> FlagView:
    catalog.create_flag("checkout-v2", enabled=True)
    return catalog.get_flag("checkout-v2")


def create(ramps: Ramps, flag: FlagView, *rollouts: int, **options: Any) -> RampView:
    return ramps.create(
        flag,
        checked(*(rollouts or (5, 25, 50, 100)), end=options.pop("end", None)),
        start=options.pop("start", T0),
        guard_alarms=options.pop("guard_alarms", []),
        rollback_on_alarm=options.pop("rollback_on_alarm", False),
        insufficient_data=InsufficientData.WAIT,
        now=T0 - timedelta(minutes=5),
        actor=ACTOR,
    )


def live(conn: psycopg.Connection[Any], ramp_id: UUID) -> list[tuple[Any, ...]]:
    """(stage, status, scheduled_at) of every schedule of the ramp, oldest first."""
    return [
        tuple(row)
        for row in conn.execute(
            "SELECT ramp_stage, status, scheduled_at FROM feature_flag_schedules"
            " WHERE ramp_id = %s ORDER BY created_at, id",
            (ramp_id,),
        )
    ]


def events(ramps: Ramps, ramp_id: UUID) -> list[tuple[Any, ...]]:
    return [(e.action, e.stage, e.actor) for e in ramps.show(ramp_id).events]


def test_create_stores_the_ramp_stage_0s_schedule_and_a_created_event(
    ramps: Ramps, flag: FlagView, conn: psycopg.Connection[Any]
) -> None:
    ramp = create(ramps, flag, guard_alarms=["checkout-5xx"], end={"enabled": False})
    assert (ramp.state, ramp.current_stage, ramp.starts_at) == (RampState.ACTIVE, 0, T0)
    assert ramp.stages[1] == {"updates": {"rollout_percentage": 25}, "hold_seconds": 600}
    assert (ramp.end_updates, ramp.guard_alarms, ramp.created_by) == (
        {"enabled": False},
        ["checkout-5xx"],
        ACTOR,
    )
    # the value before the ramp is the engine's to take, when stage 0 applies
    assert ramp.value_before is None
    assert live(conn, ramp.id) == [(0, "pending", T0)]
    assert events(ramps, ramp.id) == [(RampAction.CREATED, 0, ACTOR)]


def test_a_flag_has_one_unfinished_ramp_at_a_time(ramps: Ramps, flag: FlagView) -> None:
    first = create(ramps, flag)
    with pytest.raises(
        StateConflict, match=f"already has an unfinished ramp \\({first.id}, active"
    ):
        create(ramps, flag)
    ramps.abort(first.id, now=T0, actor=ACTOR)
    assert create(ramps, flag).state == RampState.ACTIVE


def test_list_filters_and_get_refuses_an_unknown_id(
    ramps: Ramps, flag: FlagView, catalog: Catalog
) -> None:
    catalog.create_flag("search-v3", environment="staging")
    other = create(ramps, catalog.get_flag("search-v3", "staging"))
    mine = create(ramps, flag)
    ramps.pause(mine.id, now=T0, actor=ACTOR)
    assert {r.id for r in ramps.list_ramps()} == {other.id, mine.id}
    assert [r.id for r in ramps.list_ramps(environment="staging")] == [other.id]
    assert [r.id for r in ramps.list_ramps(flag_key="checkout-v2")] == [mine.id]
    assert [r.id for r in ramps.list_ramps(states=["paused"])] == [mine.id]
    with pytest.raises(NotFound, match="no ramp with id 00000000-"):
        ramps.get(UUID(int=0))


def test_pause_cancels_the_live_stage_and_keeps_the_rest_of_its_wait(
    ramps: Ramps, flag: FlagView, conn: psycopg.Connection[Any]
) -> None:
    ramp = create(ramps, flag)
    paused = ramps.pause(ramp.id, now=T0 - timedelta(seconds=90), actor=ACTOR)
    assert (paused.state, paused.paused_remaining_seconds) == (RampState.PAUSED, 90.0)
    assert live(conn, ramp.id) == [(0, "cancelled", T0)]
    detail = ramps.show(ramp.id).events[-1]
    assert (detail.action, detail.actor, detail.detail["remaining_seconds"]) == (
        RampAction.PAUSED,
        ACTOR,
        90.0,
    )
    with pytest.raises(StateConflict, match="is paused; cannot pause: only an active ramp"):
        ramps.pause(ramp.id, now=T0, actor=ACTOR)


def test_resume_makes_the_stage_due_after_the_rest_of_its_hold(
    ramps: Ramps, flag: FlagView, conn: psycopg.Connection[Any]
) -> None:
    ramp = create(ramps, flag)
    ramps.pause(ramp.id, now=T0 - timedelta(seconds=90), actor=ACTOR)
    # an hour later the clock resumes where it stopped: 90 s to go
    resumed_at = T0 + timedelta(hours=1)
    resumed = ramps.resume(ramp.id, now=resumed_at, actor="cli:bob")
    assert (resumed.ramp.state, resumed.ramp.paused_remaining_seconds) == (RampState.ACTIVE, None)
    assert (resumed.stage, resumed.due_at) == (0, resumed_at + timedelta(seconds=90))
    assert live(conn, ramp.id) == [
        (0, "cancelled", T0),
        (0, "pending", resumed_at + timedelta(seconds=90)),
    ]
    assert events(ramps, ramp.id)[-1] == (RampAction.RESUMED, 0, "cli:bob")
    with pytest.raises(StateConflict, match="is active; cannot resume"):
        ramps.resume(ramp.id, now=resumed_at, actor=ACTOR)


def test_pause_of_a_stage_waiting_for_a_retry_keeps_the_wait_until_the_retry(
    ramps: Ramps, flag: FlagView, conn: psycopg.Connection[Any]
) -> None:
    ramp = create(ramps, flag)
    retry_at = T0 + timedelta(minutes=2)
    conn.execute(
        "UPDATE feature_flag_schedules SET status = 'failed', retry_count = 1,"
        " next_retry_at = %s, last_error = 'lock timeout', last_error_class = 'lock_timeout'"
        " WHERE ramp_id = %s",
        (retry_at, ramp.id),
    )
    paused = ramps.pause(ramp.id, now=T0 + timedelta(seconds=30), actor=ACTOR)
    assert paused.paused_remaining_seconds == 90.0
    assert [row[1] for row in live(conn, ramp.id)] == ["cancelled"]


def halt(conn: psycopg.Connection[Any], ramp_id: UUID, *, stage: int = 0) -> None:
    """What the engine leaves when a stage fails for good: the schedule and the ramp."""
    conn.execute(
        "UPDATE feature_flag_schedules SET status = 'failed', retry_count = 3,"
        " last_error = 'lock timeout', last_error_class = 'lock_timeout'"
        " WHERE ramp_id = %s AND ramp_stage = %s",
        (ramp_id, stage),
    )
    conn.execute(
        "UPDATE flag_ramps SET state = 'halted', halt_error_class = 'lock_timeout',"
        " halt_reason = 'stage 0 failed', finished_at = %s WHERE id = %s",
        (T0, ramp_id),
    )


def test_resume_of_a_halted_ramp_requeues_its_failed_stage(
    ramps: Ramps, flag: FlagView, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    ramp = create(ramps, flag)
    halt(conn, ramp.id)
    with pytest.raises(StateConflict, match="is halted; cannot pause"):
        ramps.pause(ramp.id, now=T0, actor=ACTOR)
    now = T0 + timedelta(hours=2)
    resumed = ramps.resume(ramp.id, now=now, actor=ACTOR)
    assert (resumed.stage, resumed.due_at) == (0, now)
    assert (resumed.ramp.state, resumed.ramp.halt_error_class, resumed.ramp.finished_at) == (
        RampState.ACTIVE,
        None,
        None,
    )
    [schedule] = ramps.show(ramp.id).schedules
    assert resumed.schedule_id == schedule.schedule_id  # the failed one, requeued
    view = catalog.get_schedule(schedule.schedule_id)
    assert (view.state, view.retry_count, view.requeued_at) == (State.PENDING, 0, now)
    assert ramps.show(ramp.id).events[-1].detail["from"] == "halted"


def test_plain_schedule_commands_refuse_a_ramps_stages(
    ramps: Ramps, flag: FlagView, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    live = create(ramps, flag)
    [stage] = ramps.show(live.id).schedules
    with pytest.raises(StateConflict, match=_THROUGH_THE_RAMP):
        catalog.cancel(stage.schedule_id, now=T0, actor=ACTOR)
    halt(conn, live.id)
    with pytest.raises(StateConflict, match=_THROUGH_THE_RAMP):
        catalog.requeue(stage.schedule_id, now=T0, actor=ACTOR)
    bulk = ApiCatalog(conn).requeue_matching(
        RequeueFilter(), limit=10, dry_run=False, now=T0, actor=ACTOR
    )
    assert bulk == []
    assert catalog.get_schedule(stage.schedule_id).state == State.FAILED_PERMANENTLY
    assert ramps.get(live.id).state == RampState.HALTED


def test_abort_cancels_the_rest(
    ramps: Ramps, flag: FlagView, conn: psycopg.Connection[Any]
) -> None:
    ramp = create(ramps, flag)
    aborted, rollback = ramps.abort(ramp.id, now=T0, actor=ACTOR, rollback=True)
    assert (aborted.state, aborted.finished_at) == (RampState.ABORTED, T0)
    # stage 0 never applied: the ramp changed nothing, so there is nothing to roll back
    assert rollback is None
    assert live(conn, ramp.id) == [(0, "cancelled", T0)]
    assert events(ramps, ramp.id)[-1] == (RampAction.ABORTED, 0, ACTOR)
    for action in (ramps.pause, ramps.resume):
        with pytest.raises(StateConflict, match="is aborted"):
            action(ramp.id, now=T0, actor=ACTOR)
    with pytest.raises(StateConflict, match="is aborted; cannot abort"):
        ramps.abort(ramp.id, now=T0, actor=ACTOR)


def test_abort_with_rollback_schedules_the_value_before_the_ramp_now(
    ramps: Ramps, flag: FlagView, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    ramp = create(ramps, flag)
    before = {"enabled": True, "rollout_percentage": 0}
    conn.execute("UPDATE flag_ramps SET value_before = %s WHERE id = %s", (Jsonb(before), ramp.id))
    halt(conn, ramp.id)
    now = T0 + timedelta(minutes=3)
    _, rollback = ramps.abort(ramp.id, now=now, actor=ACTOR, rollback=True)
    assert rollback is not None
    view = catalog.get_schedule(rollback)
    # only the field the stages set: `enabled` may have been changed since by someone else
    restore = {"rollout_percentage": 0}
    assert (view.state, view.scheduled_at, view.updates) == (State.PENDING, now, restore)
    # a plain schedule: the ramp's only stage schedule is still its failed stage 0
    assert [s.schedule_id for s in ramps.show(ramp.id).schedules] != [rollback]
    last = ramps.show(ramp.id).events[-2:]
    assert [(e.action, e.actor) for e in last] == [
        (RampAction.ABORTED, ACTOR),
        (RampAction.ROLLED_BACK, ACTOR),
    ]
    assert last[1].detail == {"schedule_id": str(rollback), "updates": restore}


def test_show_lists_every_schedule_of_the_stages_with_its_state(
    ramps: Ramps, flag: FlagView, conn: psycopg.Connection[Any]
) -> None:
    ramp = create(ramps, flag)
    ramps.pause(ramp.id, now=T0, actor=ACTOR)
    ramps.resume(ramp.id, now=T0, actor=ACTOR)
    detail = ramps.show(ramp.id)
    assert [(s.stage, s.state, s.updates) for s in detail.schedules] == [
        (0, State.CANCELLED, {"rollout_percentage": 5}),
        (0, State.PENDING, {"rollout_percentage": 5}),
    ]
    assert [e.action for e in detail.events] == [
        RampAction.CREATED,
        RampAction.PAUSED,
        RampAction.RESUMED,
    ]


def test_a_ramps_schedules_are_read_by_index(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET enable_seqscan = off")
    plan = conn.execute("EXPLAIN " + sql.RAMP_SCHEDULES, {"ramp_id": uuid4()}).fetchall()
    assert "ix_feature_flag_schedules_ramp_id_ramp_stage" in " ".join(row[0] for row in plan)


def test_an_operator_action_on_a_ramp_a_run_holds_fails_as_transient_instead_of_hanging(
    ramps: Ramps, flag: FlagView, conn: psycopg.Connection[Any], database_url: str
) -> None:
    ramp = create(ramps, flag)
    bounded = Ramps(conn, timeouts=WriteTimeouts(lock_timeout_ms=200, statement_timeout_ms=5_000))
    with psycopg.connect(database_url) as run:
        # the server ends this holder after 5 s, so an unbounded wait ends too (and fails here)
        run.execute("SET idle_in_transaction_session_timeout = '5s'")
        run.execute("SELECT 1 FROM flag_ramps WHERE id = %s FOR UPDATE", (ramp.id,))
        with pytest.raises(TransientDatabaseError, match="lock"):
            bounded.pause(ramp.id, now=T0, actor=ACTOR)
        run.rollback()
    assert ramps.get(ramp.id).state == RampState.ACTIVE
