"""What each operator command does; the CLI parses arguments and prints the result."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import takewhile
from typing import Any
from uuid import UUID

from flag_scheduler.aws.settings import SchedulerSettings
from flag_scheduler.engine import policy as rules
from flag_scheduler.engine.backoff import BackoffPolicy, retry_timeline
from flag_scheduler.engine.limits import END_OF_TIME
from flag_scheduler.engine.records import FlagUpdates
from flag_scheduler.engine.upcoming import ScheduleState, Upcoming, upcoming_attempts
from flag_scheduler.store.api_catalog import ApiCatalog, NewSchedule, RequeueFilter
from flag_scheduler.store.catalog import FlagView, ScheduleView
from flag_scheduler.store.ramps import Ramps
from flag_scheduler_cli import render


@dataclass(frozen=True)
class Result:
    """A command's outcome: text for people and a value for --json."""

    text: str
    data: Any


@dataclass(frozen=True)
class Context:
    catalog: ApiCatalog
    now: datetime
    settings: SchedulerSettings
    actor: str
    ramps: Ramps
    # Which database, for people: "DATABASE_URL" or the embedded server's data folder.
    database: str = "DATABASE_URL"


# --- flags ---


def flags_list(ctx: Context, environment: str | None) -> Result:
    flags = ctx.catalog.flags(environment)
    rows = [
        (
            f.flag_key,
            f.environment,
            str(f.enabled).lower(),
            f.rollout_percentage,
            render.when(f.updated_at),
        )
        for f in flags
    ]
    headers = ("KEY", "ENVIRONMENT", "ENABLED", "ROLLOUT", "UPDATED")
    return Result(render.table(rows, headers), flags)


def flags_create(
    ctx: Context,
    flag_key: str,
    environment: str,
    enabled: bool,
    rollout: int,
    description: str | None,
) -> Result:
    ctx.catalog.create_flag(
        flag_key,
        environment=environment,
        enabled=enabled,
        rollout_percentage=rollout,
        description=description,
    )
    flag = ctx.catalog.get_flag(flag_key, environment)
    return Result(f"created flag {_flag_text(flag)}", flag)


def flags_show(ctx: Context, flag_key: str, environment: str) -> Result:
    flag = ctx.catalog.get_flag(flag_key, environment)
    schedules = ctx.catalog.schedules(flag_key=flag_key, environment=environment)
    text = "\n".join(
        [
            f"flag {_flag_text(flag)}",
            f"description: {flag.description or '-'}",
            f"updated:     {render.when(flag.updated_at)}",
            "",
            "schedules:",
            _schedules_table(schedules),
        ]
    )
    return Result(text, {"flag": flag, "schedules": schedules})


def _flag_text(flag: FlagView) -> str:
    return (
        f"{flag.flag_key} ({flag.environment}): enabled={str(flag.enabled).lower()}"
        f" rollout={flag.rollout_percentage}"
    )


# --- schedules ---


def schedules_create(
    ctx: Context,
    flag_key: str,
    environment: str,
    at: datetime,
    updates: FlagUpdates,
    max_retries: int | None,
    *,
    force: bool = False,
) -> Result:
    """Schedule a change after the checks the API makes (engine/creation_checks.py); `force`
    skips only the lateness limit."""
    flag = ctx.catalog.get_flag(flag_key, environment)
    new = NewSchedule(flag, at, updates, max_retries, ctx.actor)
    lateness = 0 if force else ctx.settings.max_lateness_seconds
    created = ctx.catalog.schedule_checked(new, now=ctx.now, max_lateness_seconds=lateness)
    schedule = created.schedule
    lines = [
        f"scheduled {schedule.id}: {flag_key} ({environment})"
        f" {render.updates_text(schedule.updates)} at {render.when(schedule.scheduled_at)}",
        *(f"{notice.code.replace('_', ' ')}: {notice.detail}" for notice in created.notices),
    ]
    return Result("\n".join(lines), schedule)


def schedules_list(
    ctx: Context,
    statuses: list[str] | None,
    flag_key: str | None,
    environment: str | None,
    due: bool,
    limit: int,
) -> Result:
    schedules = ctx.catalog.schedules(
        statuses=statuses,
        flag_key=flag_key,
        environment=environment,
        due_at=ctx.now if due else None,
        limit=limit + 1,
    )
    shown = schedules[:limit]
    return Result(_schedules_table(shown) + render.more_line(len(schedules), limit), shown)


def _schedules_table(schedules: list[ScheduleView]) -> str:
    rows = [
        (
            s.id,
            s.flag_key,
            s.environment,
            render.when(s.scheduled_at),
            s.state,
            s.retry_count,
            render.when(s.next_retry_at) if s.next_retry_at else None,
            render.updates_text(s.updates),
        )
        for s in schedules
    ]
    headers = ("ID", "FLAG", "ENV", "SCHEDULED", "STATE", "RETRIES", "NEXT RETRY", "UPDATES")
    return render.table(rows, headers)


def schedules_show(ctx: Context, schedule_id: UUID) -> Result:
    schedule = ctx.catalog.get_schedule(schedule_id)
    history = ctx.catalog.history(schedule_id)
    limit = _retry_limit(ctx, schedule)
    lines = [
        f"schedule {schedule.id}",
        f"flag:        {schedule.flag_key} ({schedule.environment})",
        f"updates:     {render.updates_text(schedule.updates)}",
        f"scheduled:   {render.when(schedule.scheduled_at)}",
        f"state:       {schedule.state}",
        f"retries:     {schedule.retry_count} of {limit}"
        + ("" if schedule.max_retries is not None else " (FLAG_SCHEDULE_MAX_RETRIES)"),
    ]
    if schedule.applied_at:
        lines.append(f"applied:     {render.when(schedule.applied_at)}")
    if schedule.next_retry_at:
        lines.append(f"next retry:  {render.when(schedule.next_retry_at)}")
    if schedule.last_error:
        lines.append(f"last error:  {schedule.last_error}")
    lines += ["", "history:", _history_table(history)]
    upcoming = _upcoming(ctx, schedule)
    if upcoming is not None:
        lines += ["", "upcoming attempts if each one fails:", upcoming.text]
    data = {
        "schedule": schedule,
        "state": schedule.state,
        "history": history,
        "upcoming": upcoming.data if upcoming else None,
    }
    return Result("\n".join(lines), data)


def _history_table(history: list[Any]) -> str:
    rows = [
        (
            h.attempt if h.attempt is not None else "",
            render.when(h.finished_at),
            h.outcome,
            h.error_class,
            (h.error or "")[:80] or None,
            h.request_id,
        )
        for h in history
    ]
    return render.table(rows, ("ATTEMPT", "AT", "OUTCOME", "ERROR CLASS", "ERROR", "REQUEST"))


def schedules_retry(ctx: Context, schedule_id: UUID) -> Result:
    schedule = ctx.catalog.requeue(schedule_id, now=ctx.now, actor=ctx.actor)
    return Result(
        f"requeued {schedule.id} ({schedule.flag_key}, {schedule.environment}): due now,"
        f" retries available again: {_retry_limit(ctx, schedule)}",
        schedule,
    )


def schedules_retry_failed(ctx: Context, args: Any) -> Result:
    """Requeue (or with --dry-run only list) the permanently failed schedules matching the
    filter, as POST /schedules/retry does."""
    where = RequeueFilter(
        expired=args.expired,
        flag_key=args.flag,
        environment=args.env,
        error_class=args.error_class,
        failed_since=args.since,
        failed_before=args.before,
    )
    schedules = ctx.catalog.requeue_matching(
        where, limit=args.limit, dry_run=args.dry_run, now=ctx.now, actor=ctx.actor
    )
    verb = "would requeue" if args.dry_run else "requeued"
    text = f"{verb} {len(schedules)} schedule(s)\n{_schedules_table(schedules)}"
    return Result(text, {"dry_run": args.dry_run, "count": len(schedules), "items": schedules})


def schedules_cancel(ctx: Context, schedule_id: UUID) -> Result:
    schedule = ctx.catalog.cancel(schedule_id, now=ctx.now, actor=ctx.actor)
    return Result(
        f"cancelled {schedule.id} ({schedule.flag_key}, {schedule.environment})", schedule
    )


def _retry_limit(ctx: Context, schedule: ScheduleView) -> int:
    return rules.retry_limit(schedule.max_retries, default=ctx.settings.max_retries)


def schedules_preview(ctx: Context, schedule_id: UUID) -> Result:
    schedule = ctx.catalog.get_schedule(schedule_id)
    upcoming = _upcoming(ctx, schedule)
    if upcoming is None:
        text = f"schedule {schedule.id} is {schedule.state}: no attempts are coming"
        return Result(text, {"schedule_id": schedule.id, "state": schedule.state, "attempts": []})
    header = (
        f"schedule {schedule.id} ({schedule.flag_key}, {schedule.environment}): {schedule.state}"
    )
    return Result(f"{header}\n{_policy_text(ctx.settings)}\n{upcoming.text}", upcoming.data)


def _policy_text(settings: SchedulerSettings) -> str:
    lateness = f"{settings.max_lateness_seconds} s" if settings.max_lateness_seconds else "off"
    return (
        f"policy: backoff base {settings.backoff_base_seconds} s, cap"
        f" {settings.backoff_cap_seconds} s, jitter {settings.backoff_jitter_seconds} s;"
        f" lateness limit {lateness}"
    )


def _upcoming(ctx: Context, schedule: ScheduleView) -> Result | None:
    """The attempts still to come for a pending or waiting schedule, with the real jitter
    (engine/upcoming.py: the API's GET /schedules/{id} shows the same)."""
    state = ScheduleState(
        id=schedule.id,
        state=schedule.state,
        scheduled_at=schedule.scheduled_at,
        next_retry_at=schedule.next_retry_at,
        requeued_at=schedule.requeued_at,
        retry_count=schedule.retry_count,
        retry_limit=_retry_limit(ctx, schedule),
    )
    plan = upcoming_attempts(
        state,
        now=ctx.now,
        policy=ctx.settings.backoff,
        max_lateness_seconds=ctx.settings.max_lateness_seconds,
    )
    if plan is None:
        return None
    data = {
        "schedule_id": schedule.id,
        "attempts": [
            {
                "attempt": a.attempt,
                "at": a.at,
                "delay_before_seconds": a.delay_before_seconds,
                "expired": a.expired,
            }
            for a in plan.attempts
        ],
        "expires_at": plan.expires_at,
        "permanently_failed_at": plan.permanently_failed_at,
    }
    return Result(_upcoming_text(plan), data)


def _upcoming_text(plan: Upcoming) -> str:
    rows = [
        (
            a.attempt,
            render.when(a.at),
            f"+{render.duration(a.delay_before_seconds)}"
            if a.delay_before_seconds is not None
            else "",
            "would expire" if a.expired else "",
        )
        for a in plan.attempts
    ]
    if plan.permanently_failed_at is not None:
        failed_at = render.when(plan.permanently_failed_at)
        verdict = f"if every attempt fails: permanently failed at {failed_at}"
    elif plan.cut_short_at_attempt is not None:
        verdict = (
            f"attempt {plan.cut_short_at_attempt} and later would fall after"
            f" {render.when(END_OF_TIME)}, the last time a schedule can hold: not shown"
        )
    else:
        verdict = (
            f"expires at {render.when(plan.expires_at)} (lateness limit) before its last attempt"
        )
    return render.table(rows, ("ATTEMPT", "AT", "AFTER", "")) + "\n" + verdict


def policy_preview(policy: BackoffPolicy, max_retries: int, start: datetime) -> Result:
    """The retry timeline of any schedule under a policy: jitter shown as a window."""
    attempts, rows = _jitter_windows(policy, max_retries, start)
    earliest, latest = attempts[-1]["earliest"], attempts[-1]["latest"]
    cut_short = attempts[-1]["attempt"] + 1 if len(attempts) < max_retries + 1 else None
    if cut_short is not None:
        verdict = (
            f"attempt {cut_short} and later would fall after {render.when(END_OF_TIME)}, the"
            " last time a schedule can hold: not shown"
        )
    else:
        verdict = (
            f"if every attempt fails: permanently failed between {render.when(earliest)}"
            f" and {render.when(latest)}"
        )
    text = "\n".join(
        [
            f"policy: max_retries {max_retries}, base {policy.base_seconds:g} s, cap"
            f" {policy.cap_seconds:g} s, jitter {policy.jitter_seconds:g} s",
            render.table(rows, ("ATTEMPT", "EARLIEST", "LATEST", "BACKOFF")),
            verdict,
        ]
    )
    data = {
        "attempts": attempts,
        "permanently_failed_between": None if cut_short else [earliest, latest],
        "cut_short_at_attempt": cut_short,
    }
    return Result(text, data)


def _jitter_windows(
    policy: BackoffPolicy, max_retries: int, start: datetime
) -> tuple[list[dict[str, Any]], list[tuple[object, ...]]]:
    """Each attempt's window (data, table rows): from the retry timeline without jitter to
    one jitter later per retry, up to the first window reaching the end of time."""
    flat = BackoffPolicy(policy.base_seconds, policy.cap_seconds, 0)
    timeline = retry_timeline(flat, UUID(int=0), start, max_retries, until=END_OF_TIME)
    jitter = timedelta(seconds=policy.jitter_seconds)
    # Compared, not added: past the end of time the addition itself overflows.
    shown = takewhile(lambda p: END_OF_TIME - p.at > (p.attempt - 1) * jitter, timeline)
    attempts: list[dict[str, Any]] = []
    rows: list[tuple[object, ...]] = []
    for planned in shown:
        latest = planned.at + (planned.attempt - 1) * jitter
        attempts.append({"attempt": planned.attempt, "earliest": planned.at, "latest": latest})
        delay = planned.delay_before
        backoff = f"+{render.duration(delay.total_seconds())}" if delay else ""
        rows.append((planned.attempt, render.when(planned.at), render.when(latest), backoff))
    return attempts, rows


# --- status ---


def status(ctx: Context) -> Result:
    report = ctx.catalog.status(ctx.now)
    summary = report.last_run_summary or {}
    last_run = (
        f"{render.when(report.last_run_finished_at)} (request {report.last_run_request_id or '-'};"
        f" applied {summary.get('applied', 0)}, retried {summary.get('retried', 0)},"
        f" failed {summary.get('failed_permanently', 0)})"
        if report.last_run_finished_at
        else "never"
    )
    lines = [
        f"now:                          {render.when(report.now)}",
        f"due now:                      {report.due_now}"
        + (
            f" (oldest due {render.duration(report.oldest_lag_seconds)} ago)"
            if report.due_now
            else ""
        ),
        f"waiting for retry:            {report.waiting_for_retry}"
        + (f" (next at {render.when(report.next_retry_at)})" if report.next_retry_at else ""),
        f"scheduled later:              {report.scheduled_later}",
        f"permanently failed, last 24h: {report.failed_last_24h}",
        f"last successful run:          {last_run}",
        f"database:                     {ctx.database}",
    ]
    data = {
        **render.to_jsonable(report),
        "oldest_lag_seconds": report.oldest_lag_seconds,
        "database": ctx.database,
    }
    return Result("\n".join(lines), data)
