"""What each `flag-scheduler ramps` command does; the CLI parses arguments and prints."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from flag_scheduler.aws.settings import SchedulerSettings
from flag_scheduler.engine.ramp_rules import (
    CheckedRamp,
    RetryRules,
    StagePlan,
    StageWindow,
    check_ramp,
    preview,
)
from flag_scheduler.engine.ramps import rollback_updates
from flag_scheduler.engine.states import InsufficientData, RampState, State
from flag_scheduler.store.ramps import RampDetail, RampView, StageSchedule
from flag_scheduler_cli import render
from flag_scheduler_cli.commands import Context, Result


@dataclass(frozen=True)
class RampRequest:
    """A ramp as the command line describes it, before it is checked."""

    flag_key: str
    environment: str
    start: datetime
    stages: list[dict[str, Any]]
    guard_alarms: list[str]
    rollback_on_alarm: bool
    insufficient_data: InsufficientData
    end_updates: dict[str, Any] | None = None


def stage_documents(rollouts: list[int], holds: list[int], *, enable: bool) -> list[Any]:
    """One stage document per rollout; stage 0 also enables the flag when asked to."""
    documents: list[Any] = []
    for number, (rollout, hold) in enumerate(zip(rollouts, holds, strict=True)):
        updates: dict[str, Any] = {"rollout_percentage": rollout}
        if enable and number == 0:
            updates = {"enabled": True, **updates}
        documents.append({"updates": updates, "hold_seconds": hold})
    return documents


def retry_rules(settings: SchedulerSettings) -> RetryRules:
    return RetryRules(
        backoff=settings.backoff,
        max_retries=settings.max_retries,
        max_lateness_seconds=settings.max_lateness_seconds,
    )


# --- create, preview ---


def create(ctx: Context, request: RampRequest) -> Result:
    flag = ctx.catalog.get_flag(request.flag_key, request.environment)
    checked = check_ramp(
        request.stages,
        flag=flag_fields(flag),
        start=request.start,
        end_updates=request.end_updates,
        guard_alarms=request.guard_alarms,
        rollback_on_alarm=request.rollback_on_alarm,
    )
    ramp = ctx.ramps.create(
        flag,
        checked,
        start=request.start,
        guard_alarms=request.guard_alarms,
        rollback_on_alarm=request.rollback_on_alarm,
        insufficient_data=request.insufficient_data,
        now=ctx.now,
        actor=ctx.actor,
    )
    windows = preview(
        checked.stages,
        start=request.start,
        end_updates=checked.end_updates,
        retry=retry_rules(ctx.settings),
    )
    text = "\n".join(
        [
            f"created ramp {ramp.id}: {ramp.flag_key} ({ramp.environment}),"
            f" {len(checked.stages)} stages{' and an end state' if checked.end_updates else ''}"
            f" from {render.when(ramp.starts_at)}",
            *(f"warning: {warning}" for warning in checked.warnings),
            _windows_table(windows),
        ]
    )
    return Result(text, {"ramp": ramp, "warnings": checked.warnings, "preview": windows})


def flag_fields(flag: Any) -> dict[str, bool | int]:
    return {"enabled": flag.enabled, "rollout_percentage": flag.rollout_percentage}


def preview_plan(
    settings: SchedulerSettings, stages: list[Any], start: datetime, end: dict[str, Any] | None
) -> Result:
    """A planned ramp's windows (no database: checked against no particular flag)."""
    checked = check_ramp(stages, flag={}, start=start, end_updates=end)
    windows = preview(
        checked.stages, start=start, end_updates=checked.end_updates, retry=retry_rules(settings)
    )
    return _preview_result(settings, checked, windows, header=None)


def preview_ramp(ctx: Context, ramp_id: UUID) -> Result:
    """An existing ramp's windows from its current stage on, given when that stage is due."""
    detail = ctx.ramps.show(ramp_id)
    ramp = detail.ramp
    due = _current_due(ctx.now, detail)
    header = f"ramp {ramp.id} ({ramp.flag_key}, {ramp.environment}): {ramp.state}"
    if due is None:
        text = f"{header}, stage {ramp.current_stage}: no stage is coming"
        return Result(text, {"ramp_id": ramp.id, "state": ramp.state, "preview": []})
    stages = [StagePlan(dict(s["updates"]), int(s["hold_seconds"])) for s in ramp.stages]
    rest = stages[ramp.current_stage :]
    windows = preview(
        rest, start=due, end_updates=ramp.end_updates, retry=retry_rules(ctx.settings)
    )
    windows = [_renumbered(window, ramp.current_stage) for window in windows]
    checked = CheckedRamp(tuple(rest), ramp.end_updates, ())
    return _preview_result(ctx.settings, checked, windows, header=header)


def _current_due(now: datetime, detail: RampDetail) -> datetime | None:
    """When the ramp's current stage is (or would be, once resumed now) due; None: never."""
    ramp = detail.ramp
    if ramp.state == RampState.PAUSED:
        return now + timedelta(seconds=ramp.paused_remaining_seconds or 0)
    if ramp.state != RampState.ACTIVE:
        return None
    for schedule in detail.schedules:
        if schedule.state == State.PENDING:
            return max(schedule.scheduled_at, now)
        if schedule.state == State.WAITING_FOR_RETRY:
            return schedule.next_retry_at
    return None


def _renumbered(window: StageWindow, offset: int) -> StageWindow:
    if window.name == "end":
        return window
    return StageWindow(
        str(int(window.name) + offset),
        window.updates,
        window.hold_seconds,
        window.earliest,
        window.latest,
        window.latest_by,
    )


def _preview_result(
    settings: SchedulerSettings,
    checked: CheckedRamp,
    windows: list[StageWindow],
    *,
    header: str | None,
) -> Result:
    lateness = f"{settings.max_lateness_seconds} s" if settings.max_lateness_seconds else "off"
    policy = (
        f"each stage: max_retries {settings.max_retries}, backoff base"
        f" {settings.backoff_base_seconds} s, cap {settings.backoff_cap_seconds} s, jitter"
        f" {settings.backoff_jitter_seconds} s; lateness limit {lateness}"
    )
    lines = [*([header] if header else []), policy]
    lines += [f"warning: {warning}" for warning in checked.warnings]
    lines.append(_windows_table(windows))
    lines.append(
        "EARLIEST: every earlier stage applied at its first attempt; LATEST: each one at its"
        " last chance (a run applies a due stage within one run interval)"
    )
    return Result("\n".join(lines), {"warnings": checked.warnings, "preview": windows})


def _windows_table(windows: list[StageWindow]) -> str:
    rows = [
        (
            window.name,
            render.updates_text(window.updates),
            render.duration(window.hold_seconds) if window.hold_seconds is not None else None,
            render.when(window.earliest),
            render.when(window.latest) + (" (lateness)" if window.latest_by == "lateness" else ""),
        )
        for window in windows
    ]
    return render.table(rows, ("STAGE", "UPDATES", "HOLD", "EARLIEST", "LATEST"))


# --- list, show ---


def list_ramps(
    ctx: Context,
    flag_key: str | None,
    environment: str | None,
    states: list[str] | None,
    limit: int,
) -> Result:
    found = ctx.ramps.list_ramps(
        flag_key=flag_key, environment=environment, states=states, limit=limit + 1
    )
    ramps = found[:limit]
    rows = [
        (
            ramp.id,
            ramp.flag_key,
            ramp.environment,
            ramp.state,
            _stage_text(ramp),
            render.when(ramp.starts_at),
            ", ".join(ramp.guard_alarms) or None,
        )
        for ramp in ramps
    ]
    headers = ("ID", "FLAG", "ENV", "STATE", "STAGE", "STARTS", "GUARD ALARMS")
    return Result(render.table(rows, headers) + render.more_line(len(found), limit), ramps)


def show(ctx: Context, ramp_id: UUID) -> Result:
    detail = ctx.ramps.show(ramp_id)
    ramp = detail.ramp
    lines = [
        f"ramp {ramp.id}",
        f"flag:         {ramp.flag_key} ({ramp.environment})",
        f"state:        {_state_text(ramp)}",
        f"starts:       {render.when(ramp.starts_at)}",
        f"guard:        {_guard_text(ramp)}",
        f"value before: {render.updates_text(ramp.value_before) if ramp.value_before else '-'}",
        f"created:      {render.when(ramp.created_at)} by {ramp.created_by}",
        "",
        "stages:",
        _stages_table(ramp, detail.schedules),
        "",
        "history:",
        _history_table(detail),
    ]
    schedules = [
        {**render.to_jsonable(schedule), "state": schedule.state} for schedule in detail.schedules
    ]
    data = {"ramp": ramp, "schedules": schedules, "events": detail.events}
    return Result("\n".join(lines), data)


def _state_text(ramp: RampView) -> str:
    text = f"{ramp.state}, stage {_stage_text(ramp)}"
    if ramp.state == RampState.HALTED:
        text += f" ({_halt_text(ramp)})"
    if ramp.state == RampState.PAUSED:
        text += f" (hold left: {render.duration(ramp.paused_remaining_seconds)})"
    if ramp.finished_at:
        text += f", since {render.when(ramp.finished_at)}"
    return text


def _stage_text(ramp: RampView) -> str:
    """The current stage among all (`1 of 0..3`: stages count from 0, the end state too)."""
    return f"{ramp.current_stage} of 0..{ramp.stage_count - 1}"


def _halt_text(ramp: RampView) -> str:
    """Why the ramp halted, its error class once: the reason is the failed attempt's
    last_error, which already begins with the class."""
    prefix = f"{ramp.halt_error_class}: "
    reason = (ramp.halt_reason or "").removeprefix(prefix)
    return f"{prefix}{reason}" if reason else str(ramp.halt_error_class)


def _guard_text(ramp: RampView) -> str:
    if not ramp.guard_alarms:
        return "-"
    on_alarm = "halt and roll back" if ramp.rollback_on_alarm else "halt"
    return (
        f"{', '.join(ramp.guard_alarms)} (ALARM: {on_alarm};"
        f" INSUFFICIENT_DATA: {ramp.insufficient_data})"
    )


def _stages_table(ramp: RampView, schedules: list[StageSchedule]) -> str:
    """Each stage with each of its schedules (none yet: a row without one)."""
    rows: list[tuple[object, ...]] = []
    for stage in range(ramp.stage_count):
        hold = ramp.stages[stage]["hold_seconds"] if stage < len(ramp.stages) else None
        label = str(stage) if stage < len(ramp.stages) else f"{stage} (end)"
        first = (label, render.updates_text(ramp.stage_updates(stage)), render.duration(hold))
        mine = [schedule for schedule in schedules if schedule.stage == stage]
        if not mine:
            rows.append((*first, None, None, None, None, None))
        for schedule in mine:
            rows.append(
                (
                    *first,
                    schedule.schedule_id,
                    schedule.state,
                    render.when(schedule.scheduled_at),
                    render.when(schedule.applied_at) if schedule.applied_at else None,
                    schedule.retry_count,
                )
            )
            first = ("", "", "")
    headers = ("STAGE", "UPDATES", "HOLD", "SCHEDULE", "STATE", "DUE", "APPLIED", "RETRIES")
    return render.table(rows, headers)


def _history_table(detail: RampDetail) -> str:
    rows = [
        (
            render.when(event.at),
            event.action,
            event.stage,
            event.actor,
            render.updates_text(event.detail) if event.detail else None,
        )
        for event in detail.events
    ]
    return render.table(rows, ("AT", "ACTION", "STAGE", "ACTOR", "DETAIL"))


# --- pause, resume, abort ---


def pause(ctx: Context, ramp_id: UUID) -> Result:
    ramp = ctx.ramps.pause(ramp_id, now=ctx.now, actor=ctx.actor)
    return Result(
        f"paused ramp {ramp.id} ({ramp.flag_key}, {ramp.environment}) at stage"
        f" {ramp.current_stage}: hold left {render.duration(ramp.paused_remaining_seconds)}",
        {"ramp": ramp},
    )


def resume(ctx: Context, ramp_id: UUID) -> Result:
    resumed = ctx.ramps.resume(ramp_id, now=ctx.now, actor=ctx.actor)
    ramp = resumed.ramp
    return Result(
        f"resumed ramp {ramp.id} ({ramp.flag_key}, {ramp.environment}): stage"
        f" {resumed.stage} due at {render.when(resumed.due_at)}",
        {
            "ramp": ramp,
            "stage": resumed.stage,
            "schedule_id": resumed.schedule_id,
            "due_at": resumed.due_at,
        },
    )


def abort(ctx: Context, ramp_id: UUID, rollback: bool) -> Result:
    ramp, rollback_id = ctx.ramps.abort(ramp_id, now=ctx.now, actor=ctx.actor, rollback=rollback)
    text = (
        f"aborted ramp {ramp.id} ({ramp.flag_key}, {ramp.environment}) at stage"
        f" {ramp.current_stage}"
    )
    if rollback_id is not None:
        restored = rollback_updates(
            ramp.value_before or {}, (s["updates"] for s in ramp.stages), ramp.end_updates
        )
        text += f"; rollback {rollback_id} scheduled now: {render.updates_text(restored)}"
    elif rollback:
        text += "; nothing to roll back: stage 0 never applied"
    return Result(text, {"ramp": ramp, "rollback_schedule_id": rollback_id})
