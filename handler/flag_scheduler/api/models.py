"""The API's request and response bodies (snake_case, as the contract tables name them)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    Tag,
    WithJsonSchema,
)

from flag_scheduler.engine import limits
from flag_scheduler.engine.limits import MAX_RETRY_COUNT
from flag_scheduler.engine.records import FlagUpdates
from flag_scheduler.engine.states import ErrorClass, Outcome, State, Status
from flag_scheduler.store.catalog import FlagView, ScheduleView, StatusReport


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class StatusOut(_Out):
    """The scheduler's health at `now` (as `flag-scheduler status --json`, without the
    database's location)."""

    now: datetime
    due_now: int
    oldest_due_at: datetime | None
    oldest_lag_seconds: float | None
    waiting_for_retry: int
    next_retry_at: datetime | None
    scheduled_later: int
    failed_last_24h: int
    last_run_started_at: datetime | None
    last_run_finished_at: datetime | None
    last_run_request_id: str | None
    last_run_summary: dict[str, Any] | None

    @classmethod
    def from_report(cls, report: StatusReport) -> StatusOut:
        return cls(
            now=report.now,
            due_now=report.due_now,
            oldest_due_at=report.oldest_due_at,
            oldest_lag_seconds=report.oldest_lag_seconds,
            waiting_for_retry=report.waiting_for_retry,
            next_retry_at=report.next_retry_at,
            scheduled_later=report.scheduled_later,
            failed_last_24h=report.failed_last_24h,
            last_run_started_at=report.last_run_started_at,
            last_run_finished_at=report.last_run_finished_at,
            last_run_request_id=report.last_run_request_id,
            last_run_summary=report.last_run_summary,
        )


# --- shared field types ---

FlagKey = Annotated[
    str,
    Field(
        pattern=f"^{limits.FLAG_KEY_PATTERN}$",
        description=f"Flag key: {limits.FLAG_KEY_RULE}",
        examples=["holiday-banner"],
    ),
]
Environment = Annotated[
    str,
    Field(
        pattern=f"^{limits.ENVIRONMENT_PATTERN}$",
        description=f"Environment: {limits.ENVIRONMENT_RULE}",
        examples=["production"],
    ),
]
RetryLimit = Annotated[int, Field(ge=0, le=MAX_RETRY_COUNT, strict=True)]
# RFC 3339 with seconds and an offset: we never guess a zone.
RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})$"
_DATE_TIME_SCHEMA = {"type": "string", "format": "date-time", "pattern": RFC3339}


def parse_rfc3339(value: object) -> datetime:
    """An aware datetime from an RFC 3339 string with an offset.

    Raises:
        ValueError: not a string, no offset, or not a real date and time.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("needs an offset (Z or +01:00)")
        return value
    if not isinstance(value, str) or not re.fullmatch(RFC3339, value):
        raise ValueError(
            "must be an RFC 3339 date-time with seconds and an offset, e.g. 2026-12-24T09:00:00Z"
        )
    try:
        return datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not a real date and time") from None


Rfc3339 = Annotated[datetime, BeforeValidator(parse_rfc3339), WithJsonSchema(_DATE_TIME_SCHEMA)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- flags ---


class FlagIn(_In):
    """A new flag."""

    flag_key: FlagKey
    environment: Environment = "production"
    enabled: StrictBool = False
    rollout_percentage: Annotated[StrictInt, Field(ge=0, le=100)] = 0
    # Any text but NUL, which PostgreSQL text cannot hold.
    description: Annotated[str, Field(max_length=1000, pattern="^[^\x00]*$")] | None = None


class FlagOut(_Out):
    id: UUID
    flag_key: str
    environment: str
    enabled: bool
    rollout_percentage: int
    description: str | None
    updated_at: datetime

    @classmethod
    def of(cls, flag: FlagView) -> FlagOut:
        return cls(
            id=flag.id,
            flag_key=flag.flag_key,
            environment=flag.environment,
            enabled=flag.enabled,
            rollout_percentage=flag.rollout_percentage,
            description=flag.description,
            updated_at=flag.updated_at,
        )


class FlagsOut(_Out):
    items: list[FlagOut]


# --- schedules ---


class ScheduleOut(_Out):
    """A schedule as operators see it; `state` splits `failed` into waiting_for_retry,
    failed_permanently and expired."""

    id: UUID
    flag_key: str
    environment: str
    scheduled_at: datetime
    state: State
    status: Status
    updates: Any
    applied_at: datetime | None
    retry_count: int
    max_retries: int | None
    next_retry_at: datetime | None
    last_error: str | None
    last_error_class: ErrorClass | None
    requeued_at: datetime | None

    @classmethod
    def fields_of(cls, schedule: ScheduleView) -> dict[str, Any]:
        return {
            "id": schedule.id,
            "flag_key": schedule.flag_key,
            "environment": schedule.environment,
            "scheduled_at": schedule.scheduled_at,
            "state": schedule.state,
            "status": schedule.status,
            "updates": schedule.updates,
            "applied_at": schedule.applied_at,
            "retry_count": schedule.retry_count,
            "max_retries": schedule.max_retries,
            "next_retry_at": schedule.next_retry_at,
            "last_error": schedule.last_error,
            "last_error_class": schedule.last_error_class,
            "requeued_at": schedule.requeued_at,
        }

    @classmethod
    def of(cls, schedule: ScheduleView) -> ScheduleOut:
        return cls(**cls.fields_of(schedule))


class FlagDetailOut(FlagOut):
    """A flag with its changes still to come and its latest finished ones."""

    pending: list[ScheduleOut]
    recent: list[ScheduleOut]


class LocalTimeIn(_In):
    """A wall-clock time in an IANA zone; in a daylight-saving overlap, `fold` (0: the first
    occurrence, 1: the second) or `offset` says which."""

    local: Annotated[
        str,
        Field(
            pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?$",
            examples=["2026-12-24T09:00"],
        ),
    ]
    time_zone: Annotated[str, Field(min_length=1, max_length=64, examples=["Europe/Berlin"])]
    fold: Literal[0, 1] | None = None
    # Real UTC offsets only (-14:59..+14:59): "+99:99" is a typo, not an ambiguous time.
    offset: Annotated[str, Field(pattern=r"^([Zz]|[+-](0\d|1[0-4]):[0-5]\d)$")] | None = None


class NoticeOut(_Out):
    code: str
    detail: str
    schedule_id: UUID | None = None


def _time_form(value: Any) -> str:
    return "tag:local" if isinstance(value, dict | LocalTimeIn) else "tag:rfc3339"


# Either form; the discriminator validates only the form given, so a bad value gets one
# error about that form (tags start with "tag:" and are left out of error locations).
ScheduledAt = Annotated[
    Annotated[Rfc3339, Tag("tag:rfc3339")] | Annotated[LocalTimeIn, Tag("tag:local")],
    Discriminator(_time_form),
]


class ScheduleIn(_In):
    """A change of a flag at a moment: RFC 3339 with an offset, or a local time in a zone."""

    scheduled_at: ScheduledAt
    updates: FlagUpdates
    max_retries: RetryLimit | None = None


class ScheduleCreatedOut(ScheduleOut):
    """The new schedule, what it overlaps (`warnings`) and what to know (`notes`)."""

    warnings: list[NoticeOut]
    notes: list[NoticeOut]


class SchedulePageOut(_Out):
    items: list[ScheduleOut]
    # Pass as `cursor` for the next page; null on the last page.
    next_cursor: str | None


class HistoryOut(_Out):
    attempt: int | None
    started_at: datetime
    finished_at: datetime
    outcome: Outcome
    error_class: ErrorClass | None
    error: str | None
    request_id: str | None
    actor: str | None


class UpcomingAttemptOut(_Out):
    attempt: int
    at: datetime
    delay_before_seconds: float | None
    expired: bool


class UpcomingOut(_Out):
    attempts: list[UpcomingAttemptOut]
    expires_at: datetime | None
    permanently_failed_at: datetime | None
    cut_short_at_attempt: int | None


class ScheduleDetailOut(ScheduleOut):
    history: list[HistoryOut]
    # The attempts to come if each one fails (null unless pending or waiting for a retry).
    upcoming: UpcomingOut | None


class PolicyOut(_Out):
    backoff_base_seconds: int
    backoff_cap_seconds: int
    backoff_jitter_seconds: int
    max_lateness_seconds: int
    retry_limit: int


class PreviewOut(_Out):
    schedule_id: UUID
    state: State
    policy: PolicyOut
    upcoming: UpcomingOut | None


class RequeueFilterIn(_In):
    """Which permanently failed schedules to retry; omitted fields match all."""

    state: Literal["failed_permanently", "expired"] | None = None
    flag_key: FlagKey | None = None
    environment: Environment | None = None
    error_class: ErrorClass | None = None
    # Failed (last changed) at or after / before these moments.
    failed_since: Rfc3339 | None = None
    failed_before: Rfc3339 | None = None


class BulkRetryIn(_In):
    filter: RequeueFilterIn = RequeueFilterIn()
    dry_run: StrictBool = False
    limit: Annotated[StrictInt, Field(ge=1, le=1000)] = 1000


class BulkRetryOut(_Out):
    dry_run: bool
    # How many matched (and, unless dry_run, were requeued).
    count: int
    items: list[ScheduleOut]


class TimelineStepOut(_Out):
    schedule_id: UUID
    scheduled_at: datetime
    # When the scheduler is expected to take it up (its due time, or the next run).
    at: datetime
    sets: dict[str, bool | int]
    # Fields a change scheduled after this one will already have set: left alone.
    stale_fields: list[str]
    expires: bool
    after: dict[str, bool | int]


class TimelineOut(_Out):
    flag_key: str
    environment: str
    now: datetime
    until: datetime | None
    current: dict[str, bool | int]
    steps: list[TimelineStepOut]
    # The flag once every change expected by `until` has applied.
    value_at_until: dict[str, bool | int]


class FieldErrorOut(_Out):
    field: str
    message: str


class ProblemOut(_Out):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    # Validation problems only: each bad field and what is wrong with it.
    errors: list[FieldErrorOut] | None = None


_PROBLEM_TEXT = {
    401: "No verified token",
    403: "The token lacks the scope",
    404: "No such flag, schedule or ramp",
    409: "The flag, schedule or ramp is in a state that does not allow this",
    415: "The body is not JSON (Content-Type: application/json)",
    422: "Invalid request (each bad field named) or a refused time",
    503: "The database is unavailable",
}


def responses(
    model: type[BaseModel], *statuses: int, status: int = 200, description: str = "OK"
) -> dict[int, Any]:
    """OpenAPI responses of a route: its success (`model`) and the problems it can answer
    with (401, 403, 415, 422 and 503 always)."""
    documented: dict[int, Any] = {
        status: {"description": description, "content": {"application/json": {"model": model}}}
    }
    for problem in sorted({401, 403, 415, 422, 503, *statuses}):
        documented[problem] = {
            "description": _PROBLEM_TEXT[problem],
            "content": {"application/problem+json": {"model": ProblemOut}},
        }
    return documented
