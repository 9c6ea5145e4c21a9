"""The demo's ramps: a stage that fails and retries (the next stage's hold counts from its
actual application), and a guard alarm halting another ramp; without AWS (the alarm states
come from this process)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

from flag_scheduler.aws import scheduler
from flag_scheduler.engine.ramp_rules import check_ramp
from flag_scheduler.engine.states import (
    AlarmState,
    InsufficientData,
    RampAction,
    RampState,
    State,
)
from flag_scheduler.store.catalog import Catalog
from flag_scheduler.store.ramps import RampDetail, Ramps, StageSchedule
from flag_scheduler_cli import fault_injection
from flag_scheduler_cli.local import FakeLambdaContext

START = datetime(2026, 12, 24, 10, 0, tzinfo=UTC)
TICKS = 11  # one run a minute: 10:00 .. 10:10
HOLD = 120  # seconds each stage is observed
FAULT_AT = START + timedelta(minutes=2)  # stage 1 of new-pricing meets a lock timeout
ALARM_AT = START + timedelta(minutes=2)  # recs-error-rate goes to ALARM before this run
ALARM = "recs-error-rate"

Out = Callable[[str], None]


class DemoAlarms:
    """The guard alarms' states, set by the demo (the engine's AlarmReader, no CloudWatch)."""

    def __init__(self) -> None:
        self.states: dict[str, AlarmState] = {}
        self.calls = 0

    def alarm_states(self, names: Collection[str]) -> Mapping[str, AlarmState]:
        self.calls += 1
        return {name: self.states[name] for name in names if name in self.states}


def _hhmmss(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%H:%M:%S") if moment else "-"


def walk(catalog: Catalog, conn: psycopg.Connection[Any], out: Out) -> None:
    """Create two ramps and run the handler minute by minute, printing what the ramps do."""
    ramps = Ramps(conn)
    alarms = DemoAlarms()
    alarms.states[ALARM] = AlarmState.OK
    pricing = _create(catalog, ramps, "new-pricing", [10, 25, 50, 100], [])
    recs = _create(catalog, ramps, "recommendations", [20, 50, 100], [ALARM])
    out("\nRamps, from 10:00 UTC, each stage held 2 minutes after it is applied:")
    out("  new-pricing      rollout 10 -> 25 -> 50 -> 100   stage 1's first attempt: lock timeout")
    out(
        f"  recommendations  rollout 20 -> 50 -> 100         guard alarm {ALARM}, rollback on alarm"
    )
    out(f"  planned without failures: new-pricing stage 2 due {_hhmmss(START + 2 * _hold())}\n")
    names = {pricing: "new-pricing", recs: "recommendations"}
    before = {ramp_id: ramps.show(ramp_id) for ramp_id in names}
    for tick in range(TICKS):
        now = START + timedelta(minutes=tick)
        _before_run(now, catalog, conn, alarms, out)
        flags = {name: _flag_text(catalog, name) for name in names.values()}
        scheduler.run_invocation(FakeLambdaContext(), clock=lambda now=now: now, alarms=alarms)
        scheduler.metrics.clear_metrics()
        for ramp_id, name in names.items():
            after = ramps.show(ramp_id)
            lines = _changes(before[ramp_id], after)
            if after.ramp.state == RampState.HALTED and _flag_text(catalog, name) != flags[name]:
                lines.append(f"flag now {_flag_text(catalog, name)}: the rollback applied")
            for line in lines:
                out(f"{_hhmmss(now)}  {name:<16} {line}")
            before[ramp_id] = after
        if now == FAULT_AT:
            fault_injection.clear_fault(conn, catalog.get_flag("new-pricing").id)
            out("           (the lock timeout on new-pricing clears)")
    _print_the_end(catalog, ramps, names, alarms, out)


def _flag_text(catalog: Catalog, key: str) -> str:
    flag = catalog.get_flag(key)
    return f"enabled={str(flag.enabled).lower()} rollout={flag.rollout_percentage}"


def _hold() -> timedelta:
    return timedelta(seconds=HOLD)


def _create(
    catalog: Catalog, ramps: Ramps, key: str, rollouts: list[int], guard: list[str]
) -> UUID:
    catalog.create_flag(key, enabled=True)
    flag = catalog.get_flag(key)
    documents = [{"updates": {"rollout_percentage": r}, "hold_seconds": HOLD} for r in rollouts]
    checked = check_ramp(documents, flag={"enabled": True, "rollout_percentage": 0}, start=START)
    ramp = ramps.create(
        flag,
        checked,
        start=START,
        guard_alarms=guard,
        rollback_on_alarm=bool(guard),
        insufficient_data=InsufficientData.WAIT,
        now=START,
        actor="demo",
    )
    return ramp.id


def _before_run(
    now: datetime, catalog: Catalog, conn: psycopg.Connection[Any], alarms: DemoAlarms, out: Out
) -> None:
    if now == FAULT_AT:
        flag = catalog.get_flag("new-pricing").id
        fault_injection.set_fault(conn, flag, "55P03", "lock timeout on new-pricing (injected)")
        out(f"{_hhmmss(now)}  (updates of new-pricing now fail: lock timeout)")
    if now == ALARM_AT:
        alarms.states[ALARM] = AlarmState.ALARM
        out(f"{_hhmmss(now)}  (alarm {ALARM} goes to ALARM)")


def _changes(before: RampDetail, after: RampDetail) -> list[str]:
    """What one run did to a ramp: its stages' schedules, then its new history rows."""
    seen = {(s.schedule_id, s.state, s.retry_count) for s in before.schedules}
    lines = [
        _stage_line(schedule, after)
        for schedule in after.schedules
        if (schedule.schedule_id, schedule.state, schedule.retry_count) not in seen
        and schedule.state != State.PENDING
    ]
    for event in after.events[len(before.events) :]:
        if event.action in (RampAction.HALTED, RampAction.COMPLETED, RampAction.ROLLED_BACK):
            lines.append(_event_line(event.action, event.detail, after))
    return lines


def _stage_line(schedule: StageSchedule, detail: RampDetail) -> str:
    head = f"stage {schedule.stage} ({_updates(schedule.updates)})"
    if schedule.state == State.WAITING_FOR_RETRY:
        return (
            f"{head} failed, retry {schedule.retry_count} at {_hhmmss(schedule.next_retry_at)};"
            f" the ramp waits  ({schedule.last_error})"
        )
    if schedule.state != State.APPLIED:
        return f"{head} {schedule.state.replace('_', ' ')}  ({schedule.last_error})"
    retries = f" after {schedule.retry_count} retry" if schedule.retry_count else ""
    line = f"{head} applied at {_hhmmss(schedule.applied_at)}{retries}"
    following = _next_stage(detail, schedule.stage)
    if following is not None and schedule.applied_at is not None:
        line += (
            f"; stage {following.stage} due {_hhmmss(following.scheduled_at)}"
            f" = {_hhmmss(schedule.applied_at)} + hold {HOLD // 60}m"
        )
    return line


def _next_stage(detail: RampDetail, stage: int) -> StageSchedule | None:
    return next((s for s in detail.schedules if s.stage == stage + 1), None)


def _event_line(action: RampAction, detail: dict[str, Any], ramp: RampDetail) -> str:
    if action == RampAction.HALTED:
        return (
            f"ramp HALTED at stage {ramp.ramp.current_stage} ({detail.get('error_class')}):"
            " no later stage applies"
        )
    if action == RampAction.ROLLED_BACK:
        return f"rollback to its value before the ramp ({_updates(detail['updates'])}) due now"
    return "ramp completed"


def _updates(updates: Mapping[str, Any]) -> str:
    return " ".join(
        f"{key.removesuffix('_percentage')}={json.dumps(v)}" for key, v in updates.items()
    )


def _print_the_end(
    catalog: Catalog, ramps: Ramps, names: dict[UUID, str], alarms: DemoAlarms, out: Out
) -> None:
    out("\nFinal ramps and flags:")
    for ramp_id, name in names.items():
        ramp = ramps.get(ramp_id)
        out(
            f"  {name:<16} ramp {ramp.state:<9} at stage {ramp.current_stage};"
            f" flag {_flag_text(catalog, name)}"
        )
    out(f"  (alarm states read {alarms.calls} times: once per batch with a guarded stage)")
