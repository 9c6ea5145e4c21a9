"""The attempts a schedule still has to come, at their real (jittered) times: pure arithmetic
on the schedule's state, the backoff policy and the lateness limit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from flag_scheduler.engine import policy as rules
from flag_scheduler.engine.backoff import BackoffPolicy, retry_timeline
from flag_scheduler.engine.limits import END_OF_TIME
from flag_scheduler.engine.states import State


@dataclass(frozen=True)
class UpcomingAttempt:
    attempt: int
    at: datetime
    delay_before_seconds: float | None
    # After the lateness limit: the schedule expires before this attempt is made.
    expired: bool


@dataclass(frozen=True)
class Upcoming:
    """The attempts to come if each one fails, and how the schedule would end."""

    attempts: list[UpcomingAttempt]
    expires_at: datetime | None
    # When the last attempt fails; None when it expires first or the timeline is cut short.
    permanently_failed_at: datetime | None
    # The first attempt number not shown: it would fall after the last representable time.
    cut_short_at_attempt: int | None


@dataclass(frozen=True)
class ScheduleState:
    """What of a schedule decides its upcoming attempts."""

    id: UUID
    state: State
    scheduled_at: datetime
    next_retry_at: datetime | None
    requeued_at: datetime | None
    retry_count: int
    retry_limit: int


def upcoming_attempts(
    schedule: ScheduleState, *, now: datetime, policy: BackoffPolicy, max_lateness_seconds: int
) -> Upcoming | None:
    """The attempts still to come for a pending or waiting schedule; None for any other."""
    if schedule.state == State.PENDING:
        first = max(schedule.scheduled_at, now)
    elif schedule.state == State.WAITING_FOR_RETRY and schedule.next_retry_at is not None:
        first = schedule.next_retry_at
    else:
        return None
    timeline = retry_timeline(
        policy,
        schedule.id,
        first,
        schedule.retry_limit,
        attempts_made=schedule.retry_count,
        until=END_OF_TIME,
    )
    since = rules.due_since(schedule.scheduled_at, schedule.requeued_at)
    expires_at = rules.expires_at(since, max_lateness_seconds=max_lateness_seconds)
    attempts = [
        UpcomingAttempt(
            attempt=planned.attempt,
            at=planned.at,
            delay_before_seconds=(
                planned.delay_before.total_seconds() if planned.delay_before else None
            ),
            expired=expires_at is not None and planned.at > expires_at,
        )
        for planned in timeline
    ]
    last = timeline[-1]
    if expires_at is not None and last.at > expires_at:
        return Upcoming(attempts, expires_at, None, None)
    if last.attempt < schedule.retry_limit + 1:
        return Upcoming(attempts, expires_at, None, last.attempt + 1)
    return Upcoming(attempts, expires_at, last.at, None)
