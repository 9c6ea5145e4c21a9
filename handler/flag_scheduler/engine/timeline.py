"""What a flag will be after each of its pending changes, by the engine's per-field rule.

The rule (DESIGN.md, Order; engine.policy.fields_to_set, which the engine's decisions use
too): for each field the flag ends with the value of the latest-scheduled applied change
that set it; a change applied late never overwrites a field that a change scheduled after it
has already set. Pure: the caller gives the flag, what its
applied schedules last set, its pending changes and the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from flag_scheduler.engine import policy as rules

FieldValue = bool | int
# Where a change stands in scheduled order: (scheduled_at, id), as the engine compares them.
Position = rules.Order


@dataclass(frozen=True)
class PendingChange:
    """A change still to be applied: pending, or failed and waiting for a retry."""

    id: UUID
    scheduled_at: datetime
    fields: Mapping[str, FieldValue]
    # When the scheduler next tries it: scheduled_at when pending, next_retry_at when waiting.
    next_attempt_at: datetime
    # The lateness limit counts from here (scheduled_at, or when an operator requeued it).
    lateness_from: datetime

    @property
    def position(self) -> Position:
        return (self.scheduled_at, self.id)


@dataclass(frozen=True)
class FlagPlan:
    """A flag now, the position of the applied change that last set each field, and the
    changes still to come."""

    current: Mapping[str, FieldValue]
    last_set: Mapping[str, Position]
    pending: tuple[PendingChange, ...] = ()

    def with_change(self, change: PendingChange) -> FlagPlan:
        return FlagPlan(self.current, self.last_set, (*self.pending, change))


@dataclass(frozen=True)
class TimelineStep:
    """One pending change at the moment it is expected to apply, and the flag after it."""

    change: PendingChange
    at: datetime
    sets: dict[str, FieldValue]
    # Fields a change scheduled after this one will already have set: left alone.
    stale: tuple[str, ...]
    # The change would be past the lateness limit when it comes up: it expires, sets nothing.
    expires: bool
    before: dict[str, FieldValue]
    after: dict[str, FieldValue] = field(default_factory=dict)

    @property
    def superseded(self) -> bool:
        return not self.expires and not self.sets


def expected_at(change: PendingChange, now: datetime) -> datetime:
    """When the scheduler is expected to take the change up: its due time, or the next run."""
    return max(change.next_attempt_at, now)


def timeline(
    plan: FlagPlan, *, now: datetime, max_lateness_seconds: int, until: datetime | None = None
) -> list[TimelineStep]:
    """Every pending change expected by `until` (all when None), in the order they apply."""
    values = dict(plan.current)
    last_set = dict(plan.last_set)
    steps = []
    ordered = sorted(plan.pending, key=lambda c: (expected_at(c, now), c.scheduled_at, c.id))
    for change in ordered:
        at = expected_at(change, now)
        if until is not None and at > until:
            break
        before = dict(values)
        # The engine's order of questions: nothing left to set is superseded, however late;
        # only a change with something left to set can expire.
        sets = rules.fields_to_set(change.fields, last_set, change.position)
        stale = tuple(name for name in change.fields if name not in sets)
        expires = bool(sets) and rules.is_too_late(
            change.lateness_from, now=at, max_lateness_seconds=max_lateness_seconds
        )
        if expires:
            sets = {}
        last_set.update(dict.fromkeys(sets, change.position))
        values.update(sets)
        steps.append(TimelineStep(change, at, sets, stale, expires, before, dict(values)))
    return steps


def value_at(
    plan: FlagPlan, moment: datetime, *, now: datetime, max_lateness_seconds: int
) -> dict[str, FieldValue]:
    """The flag's fields once every change expected by `moment` has applied."""
    steps = timeline(plan, now=now, max_lateness_seconds=max_lateness_seconds, until=moment)
    return steps[-1].after if steps else dict(plan.current)
