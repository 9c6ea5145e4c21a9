"""The pure decision core: claimed schedules, their flags and the changes applied after them
in, each schedule's outcome and the flags' new fields out; no I/O, no clock."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from flag_scheduler.engine import policy as rules
from flag_scheduler.engine.backoff import retry_delay
from flag_scheduler.engine.limits import MAX_ERROR_LENGTH
from flag_scheduler.engine.records import (
    MAX_UPDATES_BYTES,
    AppliedSchedule,
    DueSchedule,
    FlagChange,
    FlagState,
    FlagUpdates,
    ScheduleOutcome,
)
from flag_scheduler.engine.states import Outcome, Status
from flag_scheduler.errors import FlagMissing, InvalidUpdates, ScheduleExpired, ScheduleFailure

Order = rules.Order
#: Per flag, per field: the Order of the latest applied change that set the field.
Marks = Mapping[UUID, Mapping[str, Order]]


def batch_order(schedule: DueSchedule) -> tuple[int, datetime, int]:
    """Sort key of a batch: by flag, then oldest-scheduled first, ties by id."""
    # UUID.int orders like PostgreSQL's uuid, and compares far faster than UUID objects.
    return (schedule.flag_id.int, schedule.scheduled_at, schedule.id.int)


def oldest_by_flag(schedules: Sequence[DueSchedule]) -> dict[UUID, Order]:
    """The first schedule of each flag (of schedules in batch_order): only changes applied
    after it can take a field from the batch."""
    return {s.flag_id: (s.scheduled_at, s.id) for s in reversed(schedules)}


def field_marks(applied: Iterable[AppliedSchedule]) -> dict[UUID, dict[str, Order]]:
    """For each flag and field, the latest of the applied changes that set it."""
    marks: dict[UUID, dict[str, Order]] = {}
    for change in applied:
        flag_marks = marks.setdefault(change.flag_id, {})
        order = (change.scheduled_at, change.id)
        for name in change.fields:
            if name not in flag_marks or flag_marks[name] < order:
                flag_marks[name] = order
    return marks


@dataclass(frozen=True, slots=True)
class Decision:
    """What a group of schedules comes to: outcomes in input order, the flags to write."""

    outcomes: list[ScheduleOutcome]
    #: The flags whose fields change, with their new fields.
    flags: dict[UUID, FlagState]
    #: The marks of the flags this decision touched, its applied changes included.
    marks: dict[UUID, dict[str, Order]]

    @property
    def took_effect(self) -> bool:
        """Whether some schedule was applied or found superseded (a flag answered)."""
        return any(o.outcome in (Outcome.APPLIED, Outcome.SUPERSEDED) for o in self.outcomes)


def decide(
    schedules: Sequence[DueSchedule],
    *,
    flags: Mapping[UUID, FlagState],
    marks: Marks,
    now: datetime,
    policy: rules.RunPolicy,
) -> Decision:
    """Decide schedules given in batch_order, each against its flag as the earlier ones left it.

    `flags` holds the flags that exist (a schedule of any other fails: flag_missing); a
    schedule sets only the fields no later-ordered applied change (`marks`) has set.
    """
    changed: dict[UUID, FlagState] = {}
    touched: dict[UUID, dict[str, Order]] = {}
    outcomes: list[ScheduleOutcome] = []
    for schedule in schedules:
        flag_id = schedule.flag_id
        flag_marks = touched.get(flag_id)
        if flag_marks is None:
            flag_marks = touched[flag_id] = dict(marks.get(flag_id, {}))
        state = changed.get(flag_id) or flags.get(flag_id)
        outcome = decide_one(schedule, state, flag_marks, now=now, policy=policy)
        if outcome.change is not None and state is not None:
            changed[flag_id] = state.with_fields(outcome.change.new)
            for name in outcome.change.new:
                flag_marks[name] = (schedule.scheduled_at, schedule.id)
        outcomes.append(outcome)
    return Decision(outcomes, changed, touched)


def decide_one(
    schedule: DueSchedule,
    state: FlagState | None,
    flag_marks: Mapping[str, Order],
    *,
    now: datetime,
    policy: rules.RunPolicy,
) -> ScheduleOutcome:
    """One schedule against its flag's state (None: no such flag): applied, superseded, or
    failed for good (invalid updates, missing flag, too late)."""
    attempt = schedule.retry_count + 1
    try:
        updates = validate(schedule)
        if state is None:
            raise FlagMissing(f"flag {schedule.flag_id} does not exist")
        order = (schedule.scheduled_at, schedule.id)
        fields = rules.fields_to_set(updates.fields(), flag_marks, order)
        if not fields:
            # Nothing left to set, however late: superseded, not an expiry alert.
            return ScheduleOutcome(
                schedule, status=Status.SUPERSEDED, outcome=Outcome.SUPERSEDED, attempt=attempt
            )
        refuse_if_expired(schedule, now=now, policy=policy)
    except ScheduleFailure as failure:
        return failure_outcome(schedule, failure, failed_at=now, policy=policy)
    before = state.fields()
    change = FlagChange(
        schedule_id=schedule.id,
        flag_key=schedule.flag_key,
        environment=schedule.environment,
        old={name: before[name] for name in fields},
        new=fields,
    )
    return ScheduleOutcome(
        schedule, status=Status.APPLIED, outcome=Outcome.APPLIED, attempt=attempt, change=change
    )


def validate(schedule: DueSchedule) -> FlagUpdates:
    """The schedule's updates, unless the document is too large, undecodable or invalid.

    Raises:
        InvalidUpdates: saying what is wrong with the document.
    """
    if schedule.updates_bytes > MAX_UPDATES_BYTES or schedule.updates is None:
        raise InvalidUpdates(
            f"updates is {schedule.updates_bytes} bytes; the limit is {MAX_UPDATES_BYTES}"
        )
    try:
        document = json.loads(schedule.updates)
    except (ValueError, RecursionError) as exc:
        # Valid JSONB can still defeat a decoder (nested thousands deep): that is this
        # schedule's problem, never a reason to fail the whole batch.
        raise InvalidUpdates(f"updates cannot be decoded: {type(exc).__name__}") from None
    return FlagUpdates.from_document(document)


def refuse_if_expired(schedule: DueSchedule, *, now: datetime, policy: rules.RunPolicy) -> None:
    """Raise ScheduleExpired when the change is later than the lateness limit allows."""
    since = rules.due_since(schedule.scheduled_at, schedule.requeued_at)
    if rules.is_too_late(since, now=now, max_lateness_seconds=policy.max_lateness_seconds):
        raise ScheduleExpired(
            f"not applied within {policy.max_lateness_seconds} s of {since.isoformat()}"
        )


def failure_outcome(
    schedule: DueSchedule,
    failure: ScheduleFailure,
    *,
    failed_at: datetime,
    policy: rules.RunPolicy,
) -> ScheduleOutcome:
    """What a failed attempt leaves: a retry due its backoff after `failed_at` while the
    failure is retryable and retries are left, else a permanent failure (or an expiry)."""
    message = str(failure)[:MAX_ERROR_LENGTH]
    limit = rules.retry_limit(schedule.max_retries, default=policy.max_retries)
    attempt = schedule.retry_count + 1
    if failure.retryable and schedule.retry_count < limit:
        delay = retry_delay(policy.backoff, schedule.retry_count, schedule.id)
        return ScheduleOutcome(
            schedule,
            status=Status.FAILED,
            outcome=Outcome.RETRY_SCHEDULED,
            attempt=attempt,
            retry_count=schedule.retry_count + 1,
            next_retry_at=failed_at + delay,
            error_class=failure.error_class,
            error=message,
            max_retries=limit,
        )
    final = Outcome.EXPIRED if isinstance(failure, ScheduleExpired) else Outcome.FAILED_PERMANENTLY
    return ScheduleOutcome(
        schedule,
        status=Status.FAILED,
        outcome=final,
        attempt=attempt,
        error_class=failure.error_class,
        error=message,
        max_retries=limit,
    )
