"""SNS alerts and FlagChanged events (moto): content, batching, retries, failures counted."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest

from flag_scheduler.aws.notifier import AwsNotifier, DeliveryFailures
from flag_scheduler.models import FlagChange, PermanentFailure
from tests.aws.conftest import client, create_event_tap, create_topic, sent_notifications

pytestmark = pytest.mark.usefixtures("aws")


def _failure(flag_key: str = "checkout-v2") -> PermanentFailure:
    return PermanentFailure(
        schedule_id=UUID("6f1c1d1e-0000-4000-8000-000000000001"),
        flag_key=flag_key,
        environment="production",
        scheduled_at=datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
        retry_count=3,
        error_class="lock_timeout",
        last_error="lock_timeout: canceling statement due to lock timeout",
    )


def _change(n: int = 0) -> FlagChange:
    return FlagChange(
        schedule_id=uuid4(),
        flag_key=f"flag-{n}",
        environment="staging",
        old={"enabled": False},
        new={"enabled": True},
    )


class _Recording:
    """Wraps a real (moto) client and records each PutEvents call's entry count."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[int] = []

    def put_events(self, **kwargs: Any) -> Any:
        self.calls.append(len(kwargs["Entries"]))
        return self.inner.put_events(**kwargs)


class _Flaky:
    """A PutEvents client whose answers are scripted: a list of entry indexes to fail."""

    def __init__(self, failing: list[set[int] | Exception]) -> None:
        self.failing = failing
        self.calls: list[list[str]] = []

    def put_events(self, **kwargs: Any) -> Any:
        entries = kwargs["Entries"]
        self.calls.append([json.loads(e["Detail"])["flag_key"] for e in entries])
        script = self.failing.pop(0) if self.failing else set()
        if isinstance(script, Exception):
            raise script
        results = [
            {"ErrorCode": "ThrottlingException", "ErrorMessage": "slow down"}
            if i in script
            else {"EventId": str(uuid4())}
            for i in range(len(entries))
        ]
        return {"FailedEntryCount": len(script), "Entries": results}


def test_one_alert_per_permanent_failure() -> None:
    topic = create_topic()
    notifier = AwsNotifier(topic_arn=topic)
    notifier.schedules_failed_permanently([_failure("a"), _failure("b")])
    sent = sent_notifications(topic)
    assert [json.loads(n["message"])["flag_key"] for n in sent] == ["a", "b"]
    assert json.loads(sent[0]["message"]) == {
        "schedule_id": "6f1c1d1e-0000-4000-8000-000000000001",
        "flag_key": "a",
        "environment": "production",
        "retry_count": 3,
        "last_error": "lock_timeout: canceling statement due to lock timeout",
        "error_class": "lock_timeout",
        "scheduled_at": "2026-03-01T09:00:00+00:00",
    }
    assert sent[0]["subject"] == "flag-scheduler: a (production) failed permanently"
    assert notifier.take_failures() == DeliveryFailures()


def test_subject_is_printable_ascii_of_at_most_100_characters() -> None:
    topic = create_topic()
    AwsNotifier(topic_arn=topic).schedules_failed_permanently([_failure("bannière-" + "x" * 120)])
    (sent,) = sent_notifications(topic)
    assert len(sent["subject"]) == 100
    assert sent["subject"].isascii()


def test_failed_alert_is_logged_and_counted_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    missing = "arn:aws:sns:eu-west-1:123456789012:no-such-topic"
    notifier = AwsNotifier(topic_arn=missing)
    with caplog.at_level(logging.ERROR):
        notifier.schedules_failed_permanently([_failure(), _failure()])
    assert notifier.take_failures() == DeliveryFailures(alerts=2)
    assert notifier.take_failures() == DeliveryFailures()  # taking resets
    assert [r.message for r in caplog.records] == ["alert_publish_failed"] * 2


def test_unconfigured_notifier_creates_no_client() -> None:
    def refuse() -> Any:
        raise AssertionError("no client may be created")

    notifier = AwsNotifier(sns=refuse, events=refuse)
    notifier.schedules_failed_permanently([_failure()])
    notifier.flags_changed([_change()])
    assert notifier.take_failures() == DeliveryFailures()


def test_flag_changed_events_in_batches_of_at_most_ten() -> None:
    tap = create_event_tap()
    recording = _Recording(client("events"))
    notifier = AwsNotifier(bus_name=tap.bus_name, events=lambda: recording)
    changes = [_change(n) for n in range(23)]
    notifier.flags_changed(changes)
    assert recording.calls == [10, 10, 3]
    events = tap.received()
    assert sorted(e["detail"]["flag_key"] for e in events) == sorted(c.flag_key for c in changes)
    first = next(e for e in events if e["detail"]["flag_key"] == "flag-0")
    assert first["source"] == "flag-scheduler"
    assert first["detail-type"] == "FlagChanged"
    assert first["detail"] == {
        "schedule_id": str(changes[0].schedule_id),
        "flag_key": "flag-0",
        "environment": "staging",
        "old": {"enabled": False},
        "new": {"enabled": True},
    }
    assert notifier.take_failures() == DeliveryFailures()


def test_failed_entries_are_retried_once() -> None:
    flaky = _Flaky([{1}])
    notifier = AwsNotifier(bus_name="bus", events=lambda: flaky)
    notifier.flags_changed([_change(0), _change(1), _change(2)])
    assert flaky.calls == [["flag-0", "flag-1", "flag-2"], ["flag-1"]]
    assert notifier.take_failures() == DeliveryFailures()


def test_entries_failing_twice_are_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    flaky = _Flaky([{0, 2}, {1}])
    notifier = AwsNotifier(bus_name="bus", events=lambda: flaky)
    with caplog.at_level(logging.ERROR):
        notifier.flags_changed([_change(0), _change(1), _change(2)])
    assert flaky.calls == [["flag-0", "flag-1", "flag-2"], ["flag-0", "flag-2"]]
    assert notifier.take_failures() == DeliveryFailures(events=1)
    (record,) = caplog.records
    assert (record.message, record.flag_key) == ("flag_event_failed", "flag-2")
    assert "ThrottlingException" in record.error


def test_a_raising_call_is_retried_once_then_counted() -> None:
    flaky = _Flaky([ConnectionError("endpoint unreachable"), ConnectionError("still")])
    notifier = AwsNotifier(bus_name="bus", events=lambda: flaky)
    notifier.flags_changed([_change(n) for n in range(12)])
    # The first batch of 10 fails twice; the second batch of 2 gets through.
    assert [len(call) for call in flaky.calls] == [10, 10, 2]
    assert notifier.take_failures() == DeliveryFailures(events=10)
