"""Response bodies built from the store's records and the engine's plans."""

from __future__ import annotations

from datetime import datetime

from flag_scheduler.api import request, runtime
from flag_scheduler.api.models import (
    HistoryOut,
    NoticeOut,
    PolicyOut,
    ScheduleCreatedOut,
    ScheduleDetailOut,
    ScheduleOut,
    SchedulePageOut,
    TimelineStepOut,
    UpcomingAttemptOut,
    UpcomingOut,
)
from flag_scheduler.engine.creation_checks import Notice
from flag_scheduler.engine.timeline import TimelineStep
from flag_scheduler.engine.upcoming import ScheduleState, upcoming_attempts
from flag_scheduler.store.api_catalog import ActionEntry, CreatedSchedule
from flag_scheduler.store.catalog import ScheduleView

# Notices that are not warnings about other schedules or the change itself.
NOTE_CODES = frozenset({"applies_at_next_run"})


def notice(item: Notice) -> NoticeOut:
    return NoticeOut(code=item.code, detail=item.detail, schedule_id=item.schedule_id)


def created(result: CreatedSchedule) -> ScheduleCreatedOut:
    return ScheduleCreatedOut(
        **ScheduleOut.fields_of(result.schedule),
        warnings=[notice(n) for n in result.notices if n.code not in NOTE_CODES],
        notes=[notice(n) for n in result.notices if n.code in NOTE_CODES],
    )


def page(schedules: list[ScheduleView], limit: int) -> SchedulePageOut:
    """A page from up to limit + 1 rows: the extra row only says there is a next page."""
    shown = schedules[:limit]
    more = len(schedules) > limit and shown
    cursor = request.encode_cursor(shown[-1].scheduled_at, shown[-1].id) if more else None
    return SchedulePageOut(items=[ScheduleOut.of(s) for s in shown], next_cursor=cursor)


def retry_limit(schedule: ScheduleView) -> int:
    if schedule.max_retries is not None:
        return schedule.max_retries
    return runtime.settings().max_retries


def upcoming(schedule: ScheduleView, now: datetime) -> UpcomingOut | None:
    settings = runtime.settings()
    state = ScheduleState(
        id=schedule.id,
        state=schedule.state,
        scheduled_at=schedule.scheduled_at,
        next_retry_at=schedule.next_retry_at,
        requeued_at=schedule.requeued_at,
        retry_count=schedule.retry_count,
        retry_limit=retry_limit(schedule),
    )
    plan = upcoming_attempts(
        state,
        now=now,
        policy=settings.backoff,
        max_lateness_seconds=settings.max_lateness_seconds,
    )
    if plan is None:
        return None
    return UpcomingOut(
        attempts=[
            UpcomingAttemptOut(
                attempt=a.attempt,
                at=a.at,
                delay_before_seconds=a.delay_before_seconds,
                expired=a.expired,
            )
            for a in plan.attempts
        ],
        expires_at=plan.expires_at,
        permanently_failed_at=plan.permanently_failed_at,
        cut_short_at_attempt=plan.cut_short_at_attempt,
    )


def detail(schedule: ScheduleView, history: list[ActionEntry], now: datetime) -> ScheduleDetailOut:
    return ScheduleDetailOut(
        **ScheduleOut.fields_of(schedule),
        history=[
            HistoryOut(
                attempt=h.attempt,
                started_at=h.started_at,
                finished_at=h.finished_at,
                outcome=h.outcome,
                error_class=h.error_class,
                error=h.error,
                request_id=h.request_id,
                actor=h.actor,
            )
            for h in history
        ],
        upcoming=upcoming(schedule, now),
    )


def policy(schedule: ScheduleView) -> PolicyOut:
    settings = runtime.settings()
    return PolicyOut(
        backoff_base_seconds=settings.backoff_base_seconds,
        backoff_cap_seconds=settings.backoff_cap_seconds,
        backoff_jitter_seconds=settings.backoff_jitter_seconds,
        max_lateness_seconds=settings.max_lateness_seconds,
        retry_limit=retry_limit(schedule),
    )


def step(item: TimelineStep) -> TimelineStepOut:
    return TimelineStepOut(
        schedule_id=item.change.id,
        scheduled_at=item.change.scheduled_at,
        at=item.at,
        sets=item.sets,
        stale_fields=list(item.stale),
        expires=item.expires,
        after=item.after,
    )
