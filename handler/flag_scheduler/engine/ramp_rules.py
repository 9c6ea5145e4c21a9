"""What a ramp may be, checked before it is stored, and when each of its stages can apply
(pure: the CLI and the HTTP API ask here)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from flag_scheduler.engine import policy as rules
from flag_scheduler.engine.backoff import BackoffPolicy, retry_timeline
from flag_scheduler.engine.durations import duration_text
from flag_scheduler.engine.limits import END_OF_TIME, TIME_RANGE_TEXT
from flag_scheduler.engine.records import FlagUpdates
from flag_scheduler.engine.states import MAX_RAMP_STAGES
from flag_scheduler.errors import FlagSchedulerError, InvalidUpdates

MAX_STAGES = MAX_RAMP_STAGES
MIN_HOLD_SECONDS = 60
# CloudWatch's own limit on an alarm name; the schema allows 20 guard alarms per ramp.
MAX_ALARM_NAME_LENGTH = 255
MAX_GUARD_ALARMS = 20
# A hold longer than a year is a forgotten ramp, and 20 of them still fit any start time.
MAX_HOLD_SECONDS = 366 * 86_400
# A refused hold is written out up to 10,000 days; a longer one is only said to be too long.
_SHOWN_UP_TO = 10_000 * 86_400

Fields = dict[str, bool | int]


class InvalidRamp(FlagSchedulerError):
    """The ramp is invalid."""

    def __init__(self, problems: Sequence[str], fields: Sequence[str] | None = None) -> None:
        super().__init__("invalid ramp: " + "; ".join(problems))
        #: One line per mistake, for an API's error list.
        self.problems = list(problems)
        #: Where each mistake lies in the ramp's document (by default, see field_of).
        self.fields = list(fields) if fields is not None else [field_of(p) for p in problems]


_STAGE_PROBLEM = re.compile(r"stage (\d+)\b")


def field_of(problem: str) -> str:
    """The part of a ramp a mistake is about: `stages.N`, `stages`, `end_updates`,
    `guard_alarms`, `rollback_on_alarm` or `starts_at` (each message below names it first)."""
    stage = _STAGE_PROBLEM.match(problem)
    if stage:
        return f"stages.{stage.group(1)}"
    for prefix, field in (
        ("end", "end_updates"),
        ("guard alarm", "guard_alarms"),
        ("a ramp has at most", "guard_alarms"),
        ("rollback_on_alarm", "rollback_on_alarm"),
        ("the stages' holds", "starts_at"),
    ):
        if problem.startswith(prefix):
            return field
    return "stages"


@dataclass(frozen=True, slots=True)
class StagePlan:
    """One validated stage: the fields it sets and how long it is observed once applied."""

    updates: Fields
    hold_seconds: int


@dataclass(frozen=True, slots=True)
class CheckedRamp:
    """A ramp that passed the checks, with what deserves a second look."""

    stages: tuple[StagePlan, ...]
    end_updates: Fields | None
    warnings: tuple[str, ...]


def check_ramp(
    stages: object,
    *,
    flag: Mapping[str, bool | int],
    start: datetime,
    end_updates: object = None,
    guard_alarms: Sequence[str] = (),
    rollback_on_alarm: bool = False,
) -> CheckedRamp:
    """Validate decoded stage documents ({"updates": {...}, "hold_seconds": N} each) and an
    optional end state against the flag's current fields (`flag`). Stages are numbered from
    0, as in the schema, the history and the alerts.

    Raises:
        InvalidRamp: one line per mistake (a count, a hold, a rollout, a stage that would
            set nothing, a ramp ending after the last time a schedule can hold, a guard
            alarm name, a rollback on alarm without any guard alarm).
    """
    if not isinstance(stages, list) or not 1 <= len(stages) <= MAX_STAGES:
        count = len(stages) if isinstance(stages, list) else type(stages).__name__
        raise InvalidRamp([f"a ramp has 1..{MAX_STAGES} stages, got {count}"])
    problems: list[str] = []
    planned = [_stage(number, document, problems) for number, document in enumerate(stages)]
    end = _end(end_updates, problems)
    warnings = _compare_steps(planned, end, dict(flag), problems)
    _check_alarms(guard_alarms, problems)
    if rollback_on_alarm and not guard_alarms:
        # No alarm could ever trigger it: the caller surely forgot the alarm.
        problems.append("rollback_on_alarm needs at least one guard alarm")
    if not problems:
        _check_fits(start, planned, problems)
    if problems:
        raise InvalidRamp(problems)
    return CheckedRamp(
        stages=tuple(stage for stage in planned if stage is not None),
        end_updates=end,
        warnings=tuple(warnings),
    )


def _stage(number: int, document: object, problems: list[str]) -> StagePlan | None:
    """One stage document as a plan, or None with its mistakes added to `problems`."""
    if not isinstance(document, Mapping) or set(document) != {"updates", "hold_seconds"}:
        problems.append(f'stage {number}: expected {{"updates": {{...}}, "hold_seconds": N}}')
        return None
    updates = _updates(f"stage {number}", document["updates"], problems)
    hold = document["hold_seconds"]
    if isinstance(hold, bool) or not isinstance(hold, int):
        problems.append(f"stage {number}: hold_seconds must be a whole number, got {hold!r}")
        return None
    if not MIN_HOLD_SECONDS <= hold <= MAX_HOLD_SECONDS:
        problems.append(
            f"stage {number}: {_hold_problem(hold)} ({MIN_HOLD_SECONDS}..{MAX_HOLD_SECONDS} s)"
        )
        return None
    return None if updates is None else StagePlan(updates=updates, hold_seconds=hold)


def _hold_problem(hold: int) -> str:
    """A hold outside the range, written out unless a count of centuries (an API caller's
    10**22 s) would bury the rule."""
    if abs(hold) < _SHOWN_UP_TO:
        return f"hold {duration_text(hold)} is outside 1 minute..366 days"
    return "hold is far beyond 366 days" if hold > 0 else "hold is negative"


def _end(document: object, problems: list[str]) -> Fields | None:
    return None if document is None else _updates("end", document, problems)


def _updates(name: str, document: object, problems: list[str]) -> Fields | None:
    """A stage's updates as fields, or None with the mistake added to `problems`."""
    rollout = document.get("rollout_percentage") if isinstance(document, Mapping) else None
    if isinstance(rollout, int) and not isinstance(rollout, bool) and not 0 <= rollout <= 100:
        problems.append(f"{name}: rollout {rollout} is outside 0..100")
        return None
    try:
        return FlagUpdates.from_document(document).fields()
    except InvalidUpdates as exc:
        problems.append(f"{name}: {exc}")
        return None


def _compare_steps(
    stages: list[StagePlan | None], end: Fields | None, flag: Fields, problems: list[str]
) -> list[str]:
    """Each step against the value before it: a refusal when it sets nothing new, a warning
    when it lowers the rollout. Returns the warnings. A field `flag` lacks (an empty `flag`:
    no particular flag, as in a plan's preview) is unknown until a stage sets it."""
    warnings: list[str] = []
    steps: list[tuple[str, Fields | None]] = [
        (f"stage {number}", stage.updates if stage else None) for number, stage in enumerate(stages)
    ]
    if end is not None:
        steps.append(("end", end))
    current: Fields | None = dict(flag)
    source = "the flag's current value"
    for name, updates in steps:
        if updates is None or current is None:
            current = None  # unknown after an invalid stage: compare no further
            continue
        if all(key in current and current[key] == value for key, value in updates.items()):
            problems.append(f"{name} sets nothing: {_fields_text(updates)} is already {source}")
        lowered = _lowered(current.get("rollout_percentage"), updates.get("rollout_percentage"))
        if lowered:
            warnings.append(f"{name} lowers the rollout from {lowered[0]} to {lowered[1]}")
        current, source = {**current, **updates}, f"the value after {name}"
    return warnings


def _lowered(before: bool | int | None, after: bool | int | None) -> tuple[int, int] | None:
    if isinstance(before, int) and isinstance(after, int) and after < before:
        return int(before), int(after)
    return None


def _check_fits(start: datetime, stages: list[StagePlan | None], problems: list[str]) -> None:
    """Every stage's earliest time must be a time a schedule can hold."""
    holds = sum(stage.hold_seconds for stage in stages if stage is not None)
    if END_OF_TIME - start <= timedelta(seconds=holds):
        problems.append(
            f"the stages' holds ({duration_text(holds)}) from {start.isoformat()} end after the"
            f" last time a schedule can hold ({TIME_RANGE_TEXT})"
        )


def _check_alarms(names: Sequence[str], problems: list[str]) -> None:
    if len(names) > MAX_GUARD_ALARMS:
        problems.append(f"a ramp has at most {MAX_GUARD_ALARMS} guard alarms, got {len(names)}")
    for name in names:
        if not 1 <= len(name) <= MAX_ALARM_NAME_LENGTH or not name.isprintable():
            shown = name if len(name) <= 40 else f"{name[:37]}..."
            problems.append(
                f"guard alarm {shown!r}: a CloudWatch alarm name is 1..255 printable characters"
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        problems.append(f"guard alarm named twice: {', '.join(repeated)}")


def _fields_text(fields: Fields) -> str:
    return ", ".join(f"{key}={str(value).lower()}" for key, value in fields.items())


# --- preview ---


@dataclass(frozen=True, slots=True)
class StageWindow:
    """When one step of a ramp can apply: `earliest` if every earlier step applies at its
    first attempt, `latest` if each applies at its last chance; `expires_at` when the
    lateness limit, not the retries, sets `latest`."""

    name: str  # "0", "1", ... (stages count from 0, as everywhere) or "end"
    updates: Fields
    hold_seconds: int | None
    earliest: datetime
    latest: datetime
    latest_by: str  # "retries" or "lateness"


@dataclass(frozen=True, slots=True)
class RetryRules:
    """The policy a stage's schedule is processed under."""

    backoff: BackoffPolicy
    max_retries: int
    max_lateness_seconds: int


def preview(
    stages: Sequence[StagePlan],
    *,
    start: datetime,
    end_updates: Fields | None,
    retry: RetryRules,
) -> list[StageWindow]:
    """Each step's window: a step becomes due its predecessor's hold after the predecessor
    applied, so the latest times add up each step's retries (or lateness limit) in turn.

    Times are when a step becomes due or retries; the run after that moment applies it.
    """
    steps: list[tuple[str, Fields, int | None]] = [
        (str(number), stage.updates, stage.hold_seconds) for number, stage in enumerate(stages)
    ]
    if end_updates is not None:
        steps.append(("end", end_updates, None))
    windows: list[StageWindow] = []
    earliest = latest = start
    for name, updates, hold in steps:
        last_chance, latest_by = _last_chance(latest, retry)
        windows.append(StageWindow(name, updates, hold, earliest, last_chance, latest_by))
        if hold is not None:
            earliest = _saturating(earliest, hold)
            latest = _saturating(last_chance, hold)
    return windows


def _last_chance(due: datetime, retry: RetryRules) -> tuple[datetime, str]:
    """The last attempt of a schedule due at `due` (each retry with its whole jitter), or
    the lateness limit when that comes first."""
    flat = BackoffPolicy(retry.backoff.base_seconds, retry.backoff.cap_seconds, 0)
    timeline = retry_timeline(flat, UUID(int=0), due, retry.max_retries, until=END_OF_TIME)
    jitter = timedelta(seconds=retry.backoff.jitter_seconds) * (len(timeline) - 1)
    last = timeline[-1].at + jitter if END_OF_TIME - timeline[-1].at > jitter else END_OF_TIME
    lateness = timedelta(seconds=retry.max_lateness_seconds)
    if not lateness or END_OF_TIME - due <= lateness:
        return last, "retries"
    expiry = rules.expires_at(due, max_lateness_seconds=retry.max_lateness_seconds)
    if expiry is not None and expiry < last:
        return expiry, "lateness"
    return last, "retries"


def _saturating(moment: datetime, seconds: int) -> datetime:
    """`moment` plus a hold, or the end of time if that is later."""
    hold = timedelta(seconds=seconds)
    return moment + hold if END_OF_TIME - moment > hold else END_OF_TIME
