"""Outbox messages from outcomes: which ones, their stable ids, and digests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from flag_scheduler.engine.messages import (
    DIGEST_LISTED_SCHEDULES,
    PendingAlert,
    digest_message,
    message_id,
    outbox_messages,
)
from flag_scheduler.engine.records import DueSchedule, FlagChange, ScheduleOutcome
from flag_scheduler.engine.states import ErrorClass, MessageKind, Outcome, Status
from migrations.schema import OUTBOX_KINDS

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SCHEDULE = DueSchedule(
    id=UUID("6f1c1d1e-0000-4000-8000-000000000001"),
    flag_id=UUID("6f1c1d1e-0000-4000-8000-0000000000f1"),
    flag_key="checkout",
    environment="production",
    scheduled_at=T0,
    updates='{"enabled": true}',
    retry_count=2,
    max_retries=None,
)
CHANGE = FlagChange(SCHEDULE.id, "checkout", "production", {"enabled": False}, {"enabled": True})
ALL = frozenset(MessageKind)


def test_the_schema_accepts_exactly_the_kinds_the_code_writes() -> None:
    assert set(OUTBOX_KINDS) == {str(kind) for kind in MessageKind}


def test_message_ids_name_kind_schedule_and_attempt_and_a_requeue() -> None:
    assert message_id(MessageKind.ALERT, SCHEDULE, 3) == f"alert:{SCHEDULE.id}:3"
    requeued = DueSchedule(**{**_fields(SCHEDULE), "requeued_at": T0 + timedelta(hours=1)})
    assert message_id(MessageKind.ALERT, requeued, 1) == (
        f"alert:{SCHEDULE.id}:1:requeued-20260301T100000.000000Z"
    )


def test_only_applied_changes_and_final_failures_report_and_only_delivered_kinds() -> None:
    outcomes = [
        # (outcome, what it reports)
        _outcome(Status.APPLIED, Outcome.APPLIED, change=CHANGE),  # FlagChanged
        _outcome(Status.FAILED, Outcome.FAILED_PERMANENTLY, error_class=ErrorClass.DEADLOCK),
        _outcome(Status.FAILED, Outcome.EXPIRED, error_class=ErrorClass.EXPIRED),  # alert
        _outcome(Status.FAILED, Outcome.RETRY_SCHEDULED, error_class=ErrorClass.DEADLOCK),
        _outcome(Status.SUPERSEDED, Outcome.SUPERSEDED),  # nothing
    ]
    kinds = [m.kind for m in outbox_messages(outcomes, ALL)]
    assert kinds == [MessageKind.FLAG_CHANGED, MessageKind.ALERT, MessageKind.ALERT]
    assert outbox_messages(outcomes, frozenset()) == []
    assert [m.kind for m in outbox_messages(outcomes, frozenset({MessageKind.ALERT}))] == [
        MessageKind.ALERT,
        MessageKind.ALERT,
    ]


def test_a_digest_counts_by_class_and_environment_and_lists_the_first_schedules() -> None:
    alerts = [
        PendingAlert(n, f"alert:s{n}:1", f"s{n}", "production" if n % 3 else "staging", cls)
        for n, cls in enumerate([ErrorClass.EXPIRED] * 20 + [ErrorClass.LOCK_TIMEOUT] * 5)
    ]
    digest = digest_message(alerts)
    assert digest.kind == MessageKind.DIGEST
    assert digest.payload["failures"] == 25
    assert digest.payload["by_error_class"] == {"expired": 20, "lock_timeout": 5}
    assert sum(digest.payload["by_environment"].values()) == 25
    assert digest.payload["schedule_ids"] == [f"s{n}" for n in range(DIGEST_LISTED_SCHEDULES)]
    assert digest.payload["more_schedules"] == 25 - DIGEST_LISTED_SCHEDULES
    assert (digest.payload["halted_ramps"], digest.payload["more_halted_ramps"]) == ([], 0)
    # The same alerts, in any order, give the same id; one alert more gives another.
    assert digest_message(list(reversed(alerts))).message_id == digest.message_id
    assert digest_message(alerts[:-1]).message_id != digest.message_id


def _fields(schedule: DueSchedule) -> dict[str, object]:
    return {name: getattr(schedule, name) for name in DueSchedule.__slots__}


def _outcome(status: Status, outcome: Outcome, **fields: Any) -> ScheduleOutcome:
    return ScheduleOutcome(SCHEDULE, status=status, outcome=outcome, attempt=3, **fields)


def test_a_digest_names_every_ramp_its_alerts_halted_once_up_to_the_listed_number() -> None:
    alerts = [
        PendingAlert(n, f"alert:s{n}:1", f"s{n}", "staging", "expired", f"r{n}", 1, f"f{n}")
        for n in range(DIGEST_LISTED_SCHEDULES + 3)
    ]
    alerts.insert(0, PendingAlert(99, "alert:plain:1", "plain", "production", "lock_timeout"))
    # r0 resumed and halted again at stage 2: named once, by its latest alert.
    alerts.append(PendingAlert(100, "alert:s0b:1", "s0b", "staging", "guard_alarm", "r0", 2, "f0"))
    digest = digest_message(alerts)
    assert digest.payload["halted_ramps"][:2] == [
        {
            "ramp_id": "r1",
            "flag_key": "f1",
            "environment": "staging",
            "stage": 1,
            "schedule_id": "s1",
            "error_class": "expired",
        },
        {
            "ramp_id": "r2",
            "flag_key": "f2",
            "environment": "staging",
            "stage": 1,
            "schedule_id": "s2",
            "error_class": "expired",
        },
    ]
    named = [r["ramp_id"] for r in digest.payload["halted_ramps"]]
    assert len(named) == DIGEST_LISTED_SCHEDULES
    assert digest.payload["more_halted_ramps"] == 3  # 23 ramps in all, r0 once
    last = digest_message(alerts[-3:]).payload["halted_ramps"]
    assert [(r["ramp_id"], r["stage"]) for r in last] == [("r21", 1), ("r22", 1), ("r0", 2)]
