"""The checks a new schedule passes before it is written, shared by the API and the CLI.

Pure: times in, a UTC moment or a refusal out; a flag's plan in, warnings out. Errors name
the rule and the values (a gap's edges, both moments of an overlap, the clashing schedule).
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flag_scheduler.engine import limits
from flag_scheduler.engine import policy as rules
from flag_scheduler.engine.timeline import (
    FieldValue,
    FlagPlan,
    PendingChange,
    TimelineStep,
    timeline,
)
from flag_scheduler.errors import (
    AmbiguousLocalTime,
    InvalidScheduleTime,
    NonexistentLocalTime,
    ScheduleClash,
    TooLate,
    UnknownTimeZone,
)

# The scheduler's EventBridge rate (template.yaml: rate(1 minute)): a past change is applied
# at the latest this long after it is created.
RUN_INTERVAL_SECONDS = 60
# Sorts after every real id: a new change is placed last among changes at its instant.
LAST_ID = UUID(int=2**128 - 1)
# IANA names are ASCII words joined by '/' (Europe/Berlin, America/Argentina/Buenos_Aires,
# Etc/GMT+5). Checked before ZoneInfo sees the name: it would read any path it is given.
_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+-]{0,31}(/[A-Za-z0-9_+-]{1,32}){0,3}")


@dataclass(frozen=True)
class LocalTime:
    """A wall-clock time in a named zone; `fold` (0: first, 1: second) or `offset` says which
    of two moments an overlap means."""

    local: datetime
    time_zone: str
    fold: int | None = None
    offset: timedelta | None = None


def zone(name: str) -> ZoneInfo:
    """The IANA zone called `name`.

    Raises:
        UnknownTimeZone: naming what was given (see unknown_zone_text).
    """
    if not _ZONE_NAME.fullmatch(name) or name not in _iana_names():
        raise UnknownTimeZone(f"time_zone {unknown_zone_text(name)}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise UnknownTimeZone(f"time_zone {unknown_zone_text(name)}") from None


def unknown_zone_text(name: str) -> str:
    """Why `name` is no zone, for a caller to prefix with its own name of the field: the
    zone meant when only the letters' case differs (`europe/berlin`), else two examples."""
    shown = name if len(name) <= 40 else f"{name[:37]}..."
    meant = _names_by_lower_case().get(name.lower())
    if meant is not None:
        return f"{shown!r} is not an IANA time zone name; did you mean {meant}? (case matters)"
    return f"{shown!r} is not an IANA time zone name (e.g. Europe/Berlin, UTC)"


@functools.cache
def _iana_names() -> frozenset[str]:
    """The zone database's names, less those that are files rather than zones: `localtime`
    is whatever zone the host runs in, `posixrules` and `Factory` are no place."""
    return frozenset(zoneinfo.available_timezones() - {"localtime", "posixrules", "Factory"})


@functools.cache
def _names_by_lower_case() -> dict[str, str]:
    return {name.lower(): name for name in _iana_names()}


def _offset_text(offset: timedelta | None) -> str:
    if offset is None:
        return "?"
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _transition(tz: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The UTC second in (low, high] at which `tz` changes offset (one change in between)."""
    first = low.astimezone(tz).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).utcoffset() == first:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)


def resolve_local(spec: LocalTime) -> datetime:
    """The UTC moment a local time in a zone means.

    Raises:
        UnknownTimeZone: the zone is not an IANA name.
        NonexistentLocalTime: the time falls in a gap; names the gap's edges.
        AmbiguousLocalTime: the time falls in an overlap and neither fold nor offset says
            which; names both moments. Also an offset the time never has there.
        InvalidScheduleTime: `local` carries an offset of its own.
    """
    if spec.local.tzinfo is not None:
        raise InvalidScheduleTime("local must be a wall-clock time without an offset")
    tz = zone(spec.time_zone)
    first = spec.local.replace(tzinfo=tz, fold=0)
    second = spec.local.replace(tzinfo=tz, fold=1)
    shown = spec.local.isoformat(timespec="minutes")
    if first.utcoffset() == second.utcoffset():
        moment = first
    elif first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != spec.local:
        raise NonexistentLocalTime(_gap_text(spec, tz, first, second))
    elif spec.offset is not None:
        moment = next((c for c in (first, second) if c.utcoffset() == spec.offset), first)
    elif spec.fold is not None:
        moment = second if spec.fold else first
    else:
        raise AmbiguousLocalTime(
            f"{shown} happens twice in {spec.time_zone}: at"
            f" {_utc_text(first)} ({_offset_text(first.utcoffset())}, fold 0) and at"
            f" {_utc_text(second)} ({_offset_text(second.utcoffset())}, fold 1);"
            " say which with fold or offset"
        )
    if spec.offset is not None and moment.utcoffset() != spec.offset:
        raise AmbiguousLocalTime(
            f"{shown} in {spec.time_zone} is at {_offset_text(moment.utcoffset())}"
            + (f" or {_offset_text(second.utcoffset())}" if second != first else "")
            + f", never at offset {_offset_text(spec.offset)}"
        )
    return moment.astimezone(UTC)


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _gap_text(spec: LocalTime, tz: ZoneInfo, first: datetime, second: datetime) -> str:
    before, after = first.utcoffset(), second.utcoffset()
    assert before is not None
    assert after is not None
    naive = spec.local.replace(tzinfo=UTC)
    switch = _transition(tz, naive - max(before, after), naive - min(before, after))
    starts = (switch + before).replace(tzinfo=None).isoformat(timespec="minutes")
    ends = (switch + after).replace(tzinfo=None).isoformat(timespec="minutes")
    return (
        f"{spec.local.isoformat(timespec='minutes')} does not exist in {spec.time_zone}:"
        f" clocks jump from {starts} to {ends} ({_offset_text(before)} to"
        f" {_offset_text(after)}, at {_utc_text(switch)}); choose a time outside that gap"
    )


@dataclass(frozen=True)
class Notice:
    """Something the caller should know about a schedule that was accepted."""

    code: str
    detail: str
    schedule_id: UUID | None = None


def check_time(scheduled_at: datetime, *, now: datetime, max_lateness_seconds: int) -> list[Notice]:
    """Refuse a time no schedule can hold or that could only expire; note a past one.

    Raises:
        InvalidScheduleTime: outside the representable range.
        TooLate: before now by more than the lateness limit (when the limit is on).
    """
    problem = limits.time_problem(scheduled_at)
    if problem is not None:
        raise InvalidScheduleTime(problem)
    if scheduled_at >= now:
        return []
    late = now - scheduled_at
    if rules.is_too_late(scheduled_at, now=now, max_lateness_seconds=max_lateness_seconds):
        raise TooLate(
            f"scheduled_at {_utc_text(scheduled_at)} is {int(late.total_seconds())} s in the"
            f" past, beyond the lateness limit of {max_lateness_seconds} s"
            " (FLAG_SCHEDULE_MAX_LATENESS_SECONDS): it could only expire"
        )
    expiry = rules.expires_at(scheduled_at, max_lateness_seconds=max_lateness_seconds)
    if expiry is not None and expiry < now + timedelta(seconds=RUN_INTERVAL_SECONDS):
        # Accepted, as a late time within the limit always was, but said plainly: the next
        # run may well come after the expiry and mark it expired instead of applying it.
        return [
            Notice(
                "will_expire",
                f"scheduled_at {_utc_text(scheduled_at)} is {int(late.total_seconds())} s in"
                f" the past and expires at {_utc_text(expiry)}, before the scheduler's next"
                f" run (every {RUN_INTERVAL_SECONDS} s) is sure to come: it will likely expire",
            )
        ]
    return [
        Notice(
            "applies_at_next_run",
            f"scheduled_at {_utc_text(scheduled_at)} is {int(late.total_seconds())} s in the"
            " past: it applies at the scheduler's next run",
        )
    ]


def refuse_late_start(
    start: datetime, *, now: datetime, max_lateness_seconds: int, name: str
) -> None:
    """Refuse a ramp start already past the lateness limit (`name`: the option or field).

    Raises:
        TooLate: stage 0 would only expire, and halt the ramp.
    """
    if rules.is_too_late(start, now=now, max_lateness_seconds=max_lateness_seconds):
        raise TooLate(
            f"{name} {_utc_text(start)} is more than FLAG_SCHEDULE_MAX_LATENESS_SECONDS"
            f" ({max_lateness_seconds} s) in the past: stage 0 would expire and halt the ramp"
        )


@dataclass(frozen=True)
class RampInProgress:
    """A flag's unfinished ramp, as a new change of the flag must hear of it."""

    id: UUID
    state: str  # active, paused or halted
    current_stage: int
    #: The fields set by its stages that have no schedule yet (see unscheduled_fields).
    unscheduled_fields: frozenset[str]


def unscheduled_fields(
    state: str, current_stage: int, stage_updates: Sequence[Mapping[str, object]]
) -> frozenset[str]:
    """The fields set by a ramp's stages (end state included) that have no schedule yet:
    those after the live stage of an active ramp; from the current stage on of a paused or
    halted one (resuming it schedules that stage anew)."""
    first = current_stage + 1 if state == "active" else current_stage
    return frozenset(name for updates in stage_updates[first:] for name in updates)


def check_change(
    plan: FlagPlan,
    *,
    scheduled_at: datetime,
    fields: dict[str, FieldValue],
    now: datetime,
    max_lateness_seconds: int,
    new_id: UUID = LAST_ID,
    ramp: RampInProgress | None = None,
) -> list[Notice]:
    """Refuse a clash with a pending change; warn about overlaps (with pending changes, and
    with the stages `ramp` has yet to schedule) and a change that sets nothing new. `new_id`
    places the change among others at the same instant (the largest id by default: a new
    row's id is not known yet, and only ties depend on it).

    Raises:
        ScheduleClash: a pending change sets one of the same fields at the same instant.
    """
    _refuse_clash(plan, scheduled_at, fields)
    notices = [_overlap(other, scheduled_at, fields) for other in plan.pending]
    if ramp is not None:
        notices.append(_ramp_overlap(ramp, fields))
    new = PendingChange(new_id, scheduled_at, fields, scheduled_at, scheduled_at)
    steps = timeline(plan.with_change(new), now=now, max_lateness_seconds=max_lateness_seconds)
    step = next(s for s in steps if s.change.id == new_id)
    notices += _step_notices(step, fields)
    return [notice for notice in notices if notice is not None]


def _ramp_overlap(ramp: RampInProgress, fields: dict[str, FieldValue]) -> Notice | None:
    shared = sorted(ramp.unscheduled_fields & set(fields))
    if not shared:
        return None
    names = ", ".join(shared)
    waiting = "" if ramp.state == "active" else ", once the ramp is resumed,"
    detail = (
        f"ramp {ramp.id} ({ramp.state}, at stage {ramp.current_stage}) sets {names} in stages"
        f" not scheduled yet: each is scheduled{waiting} when the stage before it applies,"
        " so a stage that applies after this change overrides it (the later one wins, per"
        " field)"
    )
    return Notice("ramp_overrides_later", detail)


def _refuse_clash(plan: FlagPlan, scheduled_at: datetime, fields: dict[str, FieldValue]) -> None:
    """Raises ScheduleClash when a pending change sets one of `fields` at `scheduled_at`."""
    for other in plan.pending:
        shared = sorted(set(other.fields) & set(fields))
        if shared and other.scheduled_at == scheduled_at:
            raise ScheduleClash(
                f"schedule {other.id} already sets {', '.join(shared)} of this flag at"
                f" {_utc_text(scheduled_at)}; cancel it or choose another time"
            )


def _step_notices(step: TimelineStep, fields: dict[str, FieldValue]) -> list[Notice]:
    """Warnings from where the new change falls on the timeline: fields a later applied
    change already set, or nothing new set at all."""
    notices: list[Notice] = []
    if step.stale:
        notices.append(
            Notice(
                "already_superseded",
                f"a change scheduled after this one has already set {', '.join(step.stale)}:"
                " the scheduler will leave those fields alone",
            )
        )
    if all(step.before.get(name) == value for name, value in step.sets.items()):
        shown = ", ".join(f"{name}={_json(value)}" for name, value in fields.items())
        notices.append(
            Notice(
                "no_change",
                f"sets nothing new: when it applies the flag will already have {shown}",
            )
        )
    return notices


def _overlap(
    other: PendingChange, scheduled_at: datetime, fields: dict[str, FieldValue]
) -> Notice | None:
    shared = sorted(set(other.fields) & set(fields))
    if not shared:
        return None
    names = ", ".join(shared)
    if other.scheduled_at < scheduled_at:
        detail = (
            f"schedule {other.id} sets {names} earlier, at {_utc_text(other.scheduled_at)};"
            " this change overrides it from its own time (the later one wins, per field)"
        )
        return Notice("overrides_earlier", detail, other.id)
    detail = (
        f"schedule {other.id} sets {names} later, at {_utc_text(other.scheduled_at)};"
        " it will override this change (the later one wins, per field)"
    )
    return Notice("overridden_later", detail, other.id)


def _json(value: FieldValue) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
