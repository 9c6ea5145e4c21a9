"""Ramps in a run, decided without I/O: which claimed stages may run given their guard
alarms, and what applying or failing a stage does to its ramp."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

from flag_scheduler.engine.records import DueSchedule, Ramp, RampEvent, ScheduleOutcome
from flag_scheduler.engine.states import (
    SCHEDULER_ACTOR,
    AlarmState,
    InsufficientData,
    Outcome,
    RampAction,
    RampState,
)
from flag_scheduler.errors import GuardAlarmFired


class AlarmReader(Protocol):
    """Reads CloudWatch alarm states (flag_scheduler.aws.alarms implements it)."""

    def alarm_states(self, names: Collection[str]) -> Mapping[str, AlarmState]:
        """The state of each named alarm that exists, in one call.

        Raises:
            AlarmsUnavailable: the states could not be read.
        """
        ...


def alarm_names(batch: Sequence[DueSchedule], ramps: Mapping[UUID, Ramp]) -> list[str]:
    """Every guard alarm of the ramps whose stages are in the batch, once each, sorted."""
    names = {
        name
        for schedule in batch
        if schedule.ramp_id is not None and schedule.ramp_id in ramps
        for name in ramps[schedule.ramp_id].guard_alarms
    }
    return sorted(names)


@dataclass(frozen=True, slots=True)
class Gate:
    """A batch sorted by what the ramps' state and guard alarms allow."""

    #: May be decided as usual (plain schedules, and stages whose alarms are quiet).
    ready: list[DueSchedule]
    #: Left due and uncharged: a guard alarm without data, unreadable alarms, or a ramp
    #: that is not active (an operator is pausing or aborting it).
    waiting: list[DueSchedule]
    #: Fail for good, halting their ramps: a guard alarm fired (or had no data, where the
    #: ramp halts on that).
    refused: list[tuple[DueSchedule, GuardAlarmFired]]
    #: The refused stages whose guard alarm was in ALARM: only these may roll the flag back.
    fired: set[UUID] = field(default_factory=set)
    #: Stages of a completed or aborted ramp: no ramp waits for them, so they are cancelled.
    ended: list[DueSchedule] = field(default_factory=list)


def gate(
    batch: Sequence[DueSchedule],
    ramps: Mapping[UUID, Ramp],
    alarms: Mapping[str, AlarmState] | None,
) -> Gate:
    """Sort a batch into stages that may run, wait, or are refused by a guard alarm.

    `alarms` is None when the states could not be read: guarded stages wait. An alarm
    that does not exist counts as having no data.
    """
    result = Gate([], [], [])
    for schedule in batch:
        ramp = ramps.get(schedule.ramp_id) if schedule.ramp_id is not None else None
        if schedule.ramp_id is None:
            result.ready.append(schedule)
        elif ramp is not None and ramp.state in (RampState.COMPLETED, RampState.ABORTED):
            result.ended.append(schedule)
        elif ramp is None or ramp.state != RampState.ACTIVE:
            result.waiting.append(schedule)
        elif not ramp.guard_alarms:
            result.ready.append(schedule)
        elif alarms is None:
            result.waiting.append(schedule)
        else:
            _guarded(result, schedule, ramp, alarms)
    return result


def _guarded(
    result: Gate, schedule: DueSchedule, ramp: Ramp, alarms: Mapping[str, AlarmState]
) -> None:
    states = {name: alarms.get(name, AlarmState.INSUFFICIENT_DATA) for name in ramp.guard_alarms}
    firing = sorted(name for name, state in states.items() if state == AlarmState.ALARM)
    blind = sorted(name for name, state in states.items() if state != AlarmState.OK)
    stage = schedule.ramp_stage
    if firing:
        reason = f"guard alarm {', '.join(firing)} in ALARM before stage {stage} of ramp {ramp.id}"
        result.refused.append((schedule, GuardAlarmFired(reason)))
        result.fired.add(schedule.id)
    elif blind and ramp.insufficient_data == InsufficientData.HALT:
        reason = (
            f"guard alarm {', '.join(blind)} has insufficient data before stage {stage}"
            f" of ramp {ramp.id} (the ramp halts on that)"
        )
        result.refused.append((schedule, GuardAlarmFired(reason)))
    elif blind:
        result.waiting.append(schedule)
    else:
        result.ready.append(schedule)


@dataclass(frozen=True, slots=True)
class NewSchedule:
    """A schedule a ramp step creates: the next stage (ramp_id set) or a rollback (plain)."""

    flag_id: UUID
    scheduled_at: datetime
    updates: dict[str, bool | int]
    ramp_id: UUID | None = None
    ramp_stage: int | None = None


@dataclass(frozen=True, slots=True)
class RampStep:
    """What one stage's outcome does to its ramp, written with the outcome."""

    ramp: Ramp
    stage: int
    schedule_id: UUID
    action: RampAction  # stage_applied (more to come), completed or halted
    state: RampState
    current_stage: int
    #: Stage 0 applied: the fields it changed, as they were (the rest are read from the flag).
    value_before: dict[str, bool | int] | None = None
    halt: ScheduleOutcome | None = None
    schedules: list[NewSchedule] = field(default_factory=list)
    events: list[RampEvent] = field(default_factory=list)

    @property
    def next_due_at(self) -> datetime | None:
        stage = next((s for s in self.schedules if s.ramp_id is not None), None)
        return stage.scheduled_at if stage is not None else None

    def held_from(self, at: datetime) -> RampStep:
        """This step with its next stage due a full hold after `at`."""
        due = at + timedelta(seconds=self.ramp.stages[self.stage].hold_seconds)
        schedules = [
            replace(new, scheduled_at=due) if new.ramp_id is not None else new
            for new in self.schedules
        ]
        return replace(self, schedules=schedules)


def steps(
    outcomes: Sequence[ScheduleOutcome],
    ramps: Mapping[UUID, Ramp],
    *,
    applied_at: datetime,
    fired: Set[UUID] = frozenset(),
) -> list[RampStep]:
    """The ramp steps of the stages among `outcomes` that were applied (or superseded: their
    fields are already set) or failed for good; a stage waiting for a retry holds its ramp.

    `applied_at` is when the run applied them: the next stage is due its hold after it.
    `fired`: the stages refused because a guard alarm was in ALARM (Gate.fired).
    """
    found: list[RampStep] = []
    for outcome in outcomes:
        schedule = outcome.schedule
        if schedule.ramp_id is None or schedule.ramp_stage is None:
            continue
        ramp = ramps.get(schedule.ramp_id)
        if ramp is None:
            continue
        if outcome.outcome in (Outcome.APPLIED, Outcome.SUPERSEDED):
            found.append(_advance(ramp, outcome, schedule.ramp_stage, applied_at))
        elif outcome.outcome in (Outcome.FAILED_PERMANENTLY, Outcome.EXPIRED):
            rolls_back = schedule.id in fired and ramp.rollback_on_alarm
            found.append(_halt(ramp, outcome, schedule.ramp_stage, applied_at, rolls_back))
    return found


def _advance(ramp: Ramp, outcome: ScheduleOutcome, stage: int, at: datetime) -> RampStep:
    schedule = outcome.schedule
    before = dict(outcome.change.old) if outcome.change is not None else {}
    applied = RampEvent(
        ramp.id, at, RampAction.STAGE_APPLIED, SCHEDULER_ACTOR, stage, _detail(outcome)
    )
    common: dict[str, Any] = {
        "ramp": ramp,
        "stage": stage,
        "schedule_id": schedule.id,
        "value_before": before if stage == 0 else None,
    }
    if stage >= ramp.last_stage:
        done = RampEvent(ramp.id, at, RampAction.COMPLETED, SCHEDULER_ACTOR, stage)
        return RampStep(
            **common,
            action=RampAction.COMPLETED,
            state=RampState.COMPLETED,
            current_stage=stage,
            events=[applied, done],
        )
    due = at + timedelta(seconds=ramp.stages[stage].hold_seconds)
    following = NewSchedule(schedule.flag_id, due, _updates(ramp, stage + 1), ramp.id, stage + 1)
    return RampStep(
        **common,
        action=RampAction.STAGE_APPLIED,
        state=RampState.ACTIVE,
        current_stage=stage + 1,
        schedules=[following],
        events=[applied],
    )


def _updates(ramp: Ramp, stage: int) -> dict[str, bool | int]:
    if stage < len(ramp.stages):
        return dict(ramp.stages[stage].updates)
    assert ramp.end_updates is not None  # last_stage counts the end state only if set
    return dict(ramp.end_updates)


def rollback_updates(
    value_before: Mapping[str, Any],
    stage_updates: Iterable[Mapping[str, Any]],
    end_updates: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The flag's fields before the ramp, restricted to those some stage or the end state
    sets: a rollback must not undo a change (e.g. a kill switch) the ramp never made."""
    touched = {name for updates in stage_updates for name in updates}
    touched.update(end_updates or {})
    return {name: value for name, value in value_before.items() if name in touched}


def _halt(
    ramp: Ramp, outcome: ScheduleOutcome, stage: int, at: datetime, rolls_back: bool
) -> RampStep:
    schedule = outcome.schedule
    events = [RampEvent(ramp.id, at, RampAction.HALTED, SCHEDULER_ACTOR, stage, _detail(outcome))]
    schedules: list[NewSchedule] = []
    before = ramp.value_before or {}
    restore = rollback_updates(before, (s.updates for s in ramp.stages), ramp.end_updates)
    if rolls_back and restore:
        schedules.append(NewSchedule(schedule.flag_id, at, restore))
        detail = {"updates": dict(restore)}
        events.append(
            RampEvent(ramp.id, at, RampAction.ROLLED_BACK, SCHEDULER_ACTOR, stage, detail)
        )
    return RampStep(
        ramp=ramp,
        stage=stage,
        schedule_id=schedule.id,
        action=RampAction.HALTED,
        state=RampState.HALTED,
        current_stage=stage,
        halt=outcome,
        schedules=schedules,
        events=events,
    )


def _detail(outcome: ScheduleOutcome) -> dict[str, Any]:
    detail: dict[str, Any] = {"schedule_id": str(outcome.schedule.id), "outcome": outcome.outcome}
    if outcome.error_class is not None:
        detail["error_class"] = outcome.error_class
        detail["error"] = outcome.error or ""
    if outcome.change is not None:
        detail["new"] = outcome.change.new
    return detail
