"""The notifications a run writes to the outbox: alerts, FlagChanged events and digests."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from flag_scheduler.engine.records import DueSchedule, OutboxMessage, ScheduleOutcome
from flag_scheduler.engine.states import ErrorClass, MessageKind, Outcome

# More alerts than this waiting at once (a mass expiry after an outage) go out as one digest.
ALERT_DIGEST_THRESHOLD = 10
# A digest names this many schedules and counts the rest.
DIGEST_LISTED_SCHEDULES = 20


def message_id(kind: MessageKind, schedule: DueSchedule, attempt: int) -> str:
    """The stable id of what one attempt of one schedule reports."""
    base = f"{kind}:{schedule.id}:{attempt}"
    if schedule.requeued_at is None:
        return base
    # A requeue counts attempts from 1 again: its time keeps the second life's ids distinct.
    requeued = schedule.requeued_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{base}:requeued-{requeued}"


def outbox_messages(
    outcomes: Iterable[ScheduleOutcome], kinds: frozenset[MessageKind]
) -> list[OutboxMessage]:
    """The alert of each permanent failure and the FlagChanged event of each applied change,
    of the kinds someone delivers (`kinds`); nothing is written that would never be sent."""
    messages: list[OutboxMessage] = []
    for outcome in outcomes:
        kind = _reported_kind(outcome)
        if kind is not None and kind in kinds:
            messages.append(
                OutboxMessage(
                    message_id=message_id(kind, outcome.schedule, outcome.attempt),
                    kind=kind,
                    payload=_payload(kind, outcome),
                )
            )
    return messages


def _reported_kind(outcome: ScheduleOutcome) -> MessageKind | None:
    """What an outcome reports: an applied change its event, a final failure its alert."""
    if outcome.outcome == Outcome.APPLIED and outcome.change is not None:
        return MessageKind.FLAG_CHANGED
    if outcome.outcome in (Outcome.FAILED_PERMANENTLY, Outcome.EXPIRED):
        return MessageKind.ALERT
    return None


def _payload(kind: MessageKind, outcome: ScheduleOutcome) -> dict[str, Any]:
    payload = _schedule_payload(kind, outcome)
    schedule = outcome.schedule
    if schedule.ramp_id is not None:
        # A stage's event or alert names its ramp and stage (an alert: the ramp halted).
        payload["ramp_id"] = str(schedule.ramp_id)
        payload["stage"] = schedule.ramp_stage
    return payload


def _schedule_payload(kind: MessageKind, outcome: ScheduleOutcome) -> dict[str, Any]:
    schedule, change = outcome.schedule, outcome.change
    if kind == MessageKind.FLAG_CHANGED and change is not None:
        return {
            "schedule_id": str(change.schedule_id),
            "flag_key": change.flag_key,
            "environment": change.environment,
            "old": change.old,
            "new": change.new,
        }
    return {
        "schedule_id": str(schedule.id),
        "flag_key": schedule.flag_key,
        "environment": schedule.environment,
        "scheduled_at": schedule.scheduled_at.isoformat(),
        "retry_count": schedule.retry_count,
        "error_class": outcome.error_class or ErrorClass.UNKNOWN,
        "last_error": outcome.last_error or "",
    }


@dataclass(frozen=True, slots=True)
class PendingAlert:
    """What a digest needs of one waiting alert."""

    id: int
    message_id: str
    schedule_id: str
    environment: str
    error_class: str
    # A stage's alert: its ramp halted, and the digest must still say which one.
    ramp_id: str | None = None
    stage: int | None = None
    flag_key: str = ""


def digest_message(alerts: Sequence[PendingAlert]) -> OutboxMessage:
    """One alert standing for many: counts by error class and environment, the first
    schedules by id. Its id is derived from the alerts it replaces, so it is stable."""
    digest = hashlib.blake2b(digest_size=16)
    for alert in sorted(alerts, key=lambda a: a.message_id):
        digest.update(alert.message_id.encode())
        digest.update(b"\n")
    listed = [alert.schedule_id for alert in alerts[:DIGEST_LISTED_SCHEDULES]]
    # A halted ramp waits for an operator, so each is named even when its alert is folded;
    # once, by its latest alert (a ramp resumed and halted again has two).
    latest = {alert.ramp_id: alert for alert in sorted(alerts, key=lambda a: a.id) if alert.ramp_id}
    halted = [
        {
            "ramp_id": alert.ramp_id,
            "flag_key": alert.flag_key,
            "environment": alert.environment,
            "stage": alert.stage,
            "schedule_id": alert.schedule_id,
            "error_class": alert.error_class,
        }
        for alert in sorted(latest.values(), key=lambda a: a.id)
    ]
    return OutboxMessage(
        message_id=f"{MessageKind.DIGEST}:{digest.hexdigest()}",
        kind=MessageKind.DIGEST,
        payload={
            "failures": len(alerts),
            "by_error_class": dict(Counter(alert.error_class for alert in alerts).most_common()),
            "by_environment": dict(Counter(alert.environment for alert in alerts).most_common()),
            "schedule_ids": listed,
            "more_schedules": len(alerts) - len(listed),
            "halted_ramps": halted[:DIGEST_LISTED_SCHEDULES],
            "more_halted_ramps": max(0, len(halted) - DIGEST_LISTED_SCHEDULES),
        },
    )
