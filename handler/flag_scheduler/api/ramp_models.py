"""The ramp routes' request and response bodies (the shapes `flag-scheduler ramps ... --json`
prints, so the CLI and the API agree field for field)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import Field, StrictBool, StrictInt

from flag_scheduler.api.models import ScheduledAt, _In, _Out
from flag_scheduler.engine.ramp_rules import MAX_ALARM_NAME_LENGTH, MAX_GUARD_ALARMS
from flag_scheduler.engine.states import (
    ErrorClass,
    InsufficientData,
    RampAction,
    RampState,
    State,
    Status,
)
from flag_scheduler.store.ramps import RampDetail, RampHistoryEntry, RampView, StageSchedule

# Generous list bounds: the ramp rules name the real limits (1..20 stages) as problems;
# these only keep a hostile body from costing much.
_MAX_LISTED = 100
Updates = Annotated[dict[str, Any], Field(max_length=10, examples=[{"rollout_percentage": 5}])]


class RampStageIn(_In):
    """A stage: the fields it sets and how long it is observed once applied."""

    updates: Updates
    hold_seconds: StrictInt


class RampIn(_In):
    """A ramp: `stages`, or `rollout` percentages with one `hold_seconds` for every stage
    (`enable`: stage 0 also enables the flag), starting at `starts_at` (default: now)."""

    starts_at: ScheduledAt | None = None
    stages: Annotated[list[RampStageIn], Field(max_length=_MAX_LISTED)] | None = None
    rollout: Annotated[list[StrictInt], Field(max_length=_MAX_LISTED)] | None = None
    hold_seconds: StrictInt | None = None
    enable: StrictBool = False
    end_updates: Updates | None = None
    guard_alarms: Annotated[
        list[Annotated[str, Field(max_length=MAX_ALARM_NAME_LENGTH)]],
        Field(default_factory=list, max_length=MAX_GUARD_ALARMS),
    ]
    rollback_on_alarm: StrictBool = False
    insufficient_data: InsufficientData = InsufficientData.WAIT


class RampOut(_Out):
    id: UUID
    flag_key: str
    environment: str
    state: RampState
    starts_at: datetime
    stages: list[dict[str, Any]]
    end_updates: dict[str, Any] | None
    current_stage: int
    guard_alarms: list[str]
    rollback_on_alarm: bool
    insufficient_data: InsufficientData
    value_before: dict[str, Any] | None
    halt_error_class: str | None
    halt_reason: str | None
    paused_remaining_seconds: float | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, ramp: RampView) -> RampOut:
        return cls(**{name: getattr(ramp, name) for name in cls.model_fields})


class RampCreatedOut(_Out):
    """The new ramp and what deserves a second look (a rollout going down, ...)."""

    ramp: RampOut
    warnings: list[str]


class RampsOut(_Out):
    items: list[RampOut]
    # Pass as `cursor` for the next page; null on the last page.
    next_cursor: str | None


class RampScheduleOut(_Out):
    """One schedule of a stage (a halted stage resumed keeps its schedule)."""

    stage: int
    schedule_id: UUID
    state: State
    status: Status
    scheduled_at: datetime
    applied_at: datetime | None
    retry_count: int
    next_retry_at: datetime | None
    last_error: str | None
    last_error_class: ErrorClass | None
    updates: dict[str, Any]

    @classmethod
    def of(cls, schedule: StageSchedule) -> RampScheduleOut:
        fields = {name: getattr(schedule, name) for name in cls.model_fields}
        return cls(**fields)


class RampEventOut(_Out):
    at: datetime
    action: RampAction
    stage: int | None
    actor: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, event: RampHistoryEntry) -> RampEventOut:
        return cls(**{name: getattr(event, name) for name in cls.model_fields})


class RampDetailOut(_Out):
    """A ramp, each of its stages' schedules with its state and times, and its history."""

    ramp: RampOut
    schedules: list[RampScheduleOut]
    events: list[RampEventOut]

    @classmethod
    def of(cls, detail: RampDetail) -> RampDetailOut:
        return cls(
            ramp=RampOut.of(detail.ramp),
            schedules=[RampScheduleOut.of(s) for s in detail.schedules],
            events=[RampEventOut.of(e) for e in detail.events],
        )


class PausedOut(_Out):
    """The paused ramp (`paused_remaining_seconds`: the hold its stage still has)."""

    ramp: RampOut


class ResumedOut(_Out):
    """The resumed ramp and its stage's schedule: when that stage is due."""

    ramp: RampOut
    stage: int
    schedule_id: UUID
    due_at: datetime


class AbortIn(_In):
    rollback: StrictBool = False


class AbortedOut(_Out):
    """The aborted ramp and the rollback schedule (null: none asked for, or nothing to undo)."""

    ramp: RampOut
    rollback_schedule_id: UUID | None
