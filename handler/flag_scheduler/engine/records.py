"""The values that move between layers: schedules, flags, updates and run summaries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flag_scheduler.engine.states import (
    ErrorClass,
    InsufficientData,
    MessageKind,
    Outcome,
    RampAction,
    RampState,
    Status,
)
from flag_scheduler.errors import InvalidUpdates

UPDATABLE_FIELDS = ("enabled", "rollout_percentage")
# Larger `updates` documents are refused unread: a valid one is under 60 bytes.
MAX_UPDATES_BYTES = 4096


class FlagUpdates(BaseModel):
    """A schedule's `updates` document: the flag fields it sets."""

    # strict: JSON `1` is not a boolean and `50.0` or `"50"` is not a percentage.
    # defer_build: the validator is built on first use, not at import (cold start).
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, defer_build=True)

    enabled: bool | None = None
    rollout_percentage: Annotated[int, Field(ge=0, le=100)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                if value is None and key in UPDATABLE_FIELDS:
                    raise ValueError(f"{key} must not be null")
        return data

    @model_validator(mode="after")
    def _at_least_one_field(self) -> FlagUpdates:
        if not self.fields():
            raise ValueError("updates must set at least one of enabled, rollout_percentage")
        return self

    @classmethod
    def from_document(cls, document: object) -> FlagUpdates:
        """Validate a decoded `updates` JSON document.

        Raises:
            InvalidUpdates: saying which key is wrong and why.
        """
        if not isinstance(document, dict):
            raise InvalidUpdates(f"updates must be a JSON object, got {type(document).__name__}")
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            raise InvalidUpdates(_describe(exc)) from None

    def fields(self) -> dict[str, bool | int]:
        """The fields this document sets, by name."""
        return {
            name: value
            for name, value in (
                ("enabled", self.enabled),
                ("rollout_percentage", self.rollout_percentage),
            )
            if value is not None
        }


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (allowed: enabled, rollout_percentage)"
        parts.append(f"{location}: {message}" if location else message)
    return "invalid updates: " + "; ".join(parts)


@dataclass(frozen=True, slots=True)
class DueSchedule:
    """A schedule claimed for processing, with the identity of its flag."""

    id: UUID
    flag_id: UUID
    flag_key: str
    environment: str
    scheduled_at: datetime
    updates: str | None  # the JSON text; None when over the size limit (not fetched)
    retry_count: int
    max_retries: int | None
    requeued_at: datetime | None = None
    updates_bytes: int = 0
    # Why the run can neither process nor record this row (a value the engine cannot
    # represent); such a row is parked, never decided. scheduled_at is then
    # limits.EARLIEST_TIME when the stored one could not be loaded (the schema's *_in_range
    # checks bound the moments every client library can represent).
    defect: str | None = None
    # Set on a ramp's stage schedule (0-based stage), None on plain schedules.
    ramp_id: UUID | None = None
    ramp_stage: int | None = None


@dataclass(frozen=True, slots=True)
class FlagState:
    """The fields of a flag that schedules change."""

    id: UUID
    flag_key: str
    environment: str
    enabled: bool
    rollout_percentage: int

    def fields(self) -> dict[str, bool | int]:
        return {"enabled": self.enabled, "rollout_percentage": self.rollout_percentage}

    def with_fields(self, fields: Mapping[str, bool | int]) -> FlagState:
        enabled = fields.get("enabled", self.enabled)
        rollout = fields.get("rollout_percentage", self.rollout_percentage)
        return replace(self, enabled=bool(enabled), rollout_percentage=int(rollout))


@dataclass(frozen=True, slots=True)
class LockHolder:
    """A database session whose open transaction holds a flag's row lock."""

    pid: int
    application_name: str
    #: Another run of this scheduler (told by its application_name), not an application.
    is_scheduler: bool


@dataclass(frozen=True, slots=True)
class AppliedSchedule:
    """An applied schedule of a flag: when it was scheduled and which fields it names."""

    flag_id: UUID
    scheduled_at: datetime
    id: UUID
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ScheduleOutcome:
    """What processing one schedule decided: its new state and its history row."""

    schedule: DueSchedule
    status: Status  # the schedule's new status
    outcome: Outcome  # the history row's outcome
    attempt: int
    retry_count: int | None = None  # None: unchanged
    next_retry_at: datetime | None = None
    error_class: ErrorClass | None = None
    error: str | None = None
    max_retries: int | None = None
    change: FlagChange | None = None

    @property
    def last_error(self) -> str | None:
        return f"{self.error_class}: {self.error}" if self.error_class else None


@dataclass(frozen=True, slots=True)
class FlagChange:
    """A flag's fields before and after one applied schedule."""

    schedule_id: UUID
    flag_key: str
    environment: str
    old: dict[str, bool | int]
    new: dict[str, bool | int]


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One row of a schedule's history: an attempt and its outcome, or an operator action."""

    schedule_id: UUID
    attempt: int | None
    started_at: datetime
    finished_at: datetime
    outcome: Outcome
    error_class: ErrorClass | None = None
    error: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A notification written in the transaction of the outcome it reports.

    `message_id` is stable (kind, schedule, attempt): delivered more than once, it is the
    same id, so consumers can drop duplicates.
    """

    message_id: str
    kind: MessageKind
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """An outbox row claimed for delivery: the message, its row id and its attempts so far."""

    id: int
    message_id: str
    kind: MessageKind
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True, slots=True)
class RampStage:
    """One stage of a ramp: the fields it sets and how long it is observed before the next."""

    updates: dict[str, bool | int]
    hold_seconds: int

    def as_document(self) -> dict[str, Any]:
        """The stage as stored in flag_ramps.stages."""
        return {"updates": dict(self.updates), "hold_seconds": self.hold_seconds}


@dataclass(frozen=True, slots=True)
class Ramp:
    """A gradual rollout of one flag (a flag_ramps row); stages are numbered from 0."""

    id: UUID
    flag_id: UUID
    state: RampState
    starts_at: datetime
    stages: tuple[RampStage, ...]
    current_stage: int
    created_by: str
    end_updates: dict[str, bool | int] | None = None
    guard_alarms: tuple[str, ...] = ()
    rollback_on_alarm: bool = False
    insufficient_data: InsufficientData = InsufficientData.WAIT
    value_before: dict[str, bool | int] | None = None
    halt_error_class: ErrorClass | None = None
    halt_reason: str | None = None
    paused_remaining_seconds: float | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def last_stage(self) -> int:
        """The number of the ramp's final stage: the end state's when it has one."""
        return len(self.stages) if self.end_updates is not None else len(self.stages) - 1


@dataclass(frozen=True, slots=True)
class RampEvent:
    """One row of a ramp's history (flag_ramp_events)."""

    ramp_id: UUID
    at: datetime
    action: RampAction
    actor: str
    stage: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


# The first lags of a run are kept for the ScheduleLagSeconds metric; the rest only count
# towards the maximum, so a run's memory does not grow with the backlog.
LAG_SAMPLES = 1000


@dataclass(slots=True)
class RunSummary:
    """What one run did, for the handler's return value, logs and metrics."""

    claimed: int = 0
    applied: int = 0
    retried: int = 0
    retry_succeeded: int = 0
    failed_permanently: int = 0
    expired: int = 0
    superseded: int = 0
    # Rows whose values the run could not process or whose outcome it could not write:
    # parked as permanently failed (or, if even that failed, skipped for the rest of the run).
    unrecordable: int = 0
    batches: int = 0
    ramp_stages_applied: int = 0
    ramps_halted: int = 0
    ramps_completed: int = 0
    stopped_for_time: bool = False
    statements: int = 0
    transactions: int = 0
    lag_seconds: list[float] = field(default_factory=list)
    max_lag_seconds: float = 0.0

    def record_lag(self, seconds: float) -> None:
        if len(self.lag_seconds) < LAG_SAMPLES:
            self.lag_seconds.append(seconds)
        self.max_lag_seconds = max(self.max_lag_seconds, seconds)

    def as_dict(self) -> dict[str, Any]:
        return {
            "claimed": self.claimed,
            "applied": self.applied,
            "retried": self.retried,
            "retry_succeeded": self.retry_succeeded,
            "failed_permanently": self.failed_permanently,
            "expired": self.expired,
            "superseded": self.superseded,
            "unrecordable": self.unrecordable,
            "batches": self.batches,
            "ramp_stages_applied": self.ramp_stages_applied,
            "ramps_halted": self.ramps_halted,
            "ramps_completed": self.ramps_completed,
            "stopped_for_time": self.stopped_for_time,
            "statements": self.statements,
            "transactions": self.transactions,
            "max_lag_seconds": round(self.max_lag_seconds, 3),
        }
