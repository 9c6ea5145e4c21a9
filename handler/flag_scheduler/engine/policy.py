"""The knobs of a run and the rules the engine applies by: how many retries a schedule gets,
when it is too late to apply it, and which of its fields a change may still set (the engine,
the timeline, the CLI's previews and the creation checks all ask here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar
from uuid import UUID

from flag_scheduler.engine.backoff import BackoffPolicy

#: A change's place among its flag's changes: (scheduled_at, id); the id breaks ties.
Order = tuple[datetime, UUID]
Value = TypeVar("Value")


@dataclass(frozen=True)
class RunPolicy:
    """The knobs of one run, taken from Settings by the entry point."""

    max_retries: int = 3
    batch_size: int = 1000
    time_margin_ms: int = 10_000
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    lock_timeout_ms: int = 5_000
    statement_timeout_ms: int = 30_000
    max_lateness_seconds: int = 86_400  # 0: no limit
    outage_threshold: int = 5  # 0: never stop a run early
    idle_in_transaction_timeout_ms: int = 60_000


def retry_limit(max_retries: int | None, *, default: int) -> int:
    """The retries a schedule gets: its own max_retries, else the configured default."""
    return max_retries if max_retries is not None else default


def due_since(scheduled_at: datetime, requeued_at: datetime | None) -> datetime:
    """When a schedule's lateness window opened: a schedule requeued by hand gets a fresh
    window from the moment it was requeued."""
    return requeued_at or scheduled_at


def is_too_late(since: datetime, *, now: datetime, max_lateness_seconds: int) -> bool:
    """Whether a change due since `since` is past the lateness limit at `now` (0: no limit).

    Exactly at the limit is still in time."""
    return bool(max_lateness_seconds) and now - since > timedelta(seconds=max_lateness_seconds)


def expires_at(since: datetime, *, max_lateness_seconds: int) -> datetime | None:
    """The last moment a change due since `since` may still be applied; None: no limit."""
    return since + timedelta(seconds=max_lateness_seconds) if max_lateness_seconds else None


def fields_to_set(
    fields: Mapping[str, Value], marks: Mapping[str, Order], order: Order
) -> dict[str, Value]:
    """Of the fields a change at `order` sets, those it may still set: per field the latest
    scheduled wins, so not one that an applied change ordered after it (`marks`: per field,
    the order of the latest applied change that set it) has set."""
    return {
        name: value for name, value in fields.items() if name not in marks or marks[name] < order
    }
