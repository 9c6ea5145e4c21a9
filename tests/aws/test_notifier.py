"""Sending outbox messages (moto): content, stable ids, batching, failures, the deadline."""

from __future__ import annotations

import json
import logging
from typing import Any
from uuid import uuid4

import pytest

from flag_scheduler.aws.notifier import CALL_BUDGET_SECONDS, AwsNotifier
from flag_scheduler.engine.notifier import SendReport
from flag_scheduler.engine.records import ClaimedMessage
from flag_scheduler.engine.states import MessageKind
from tests.aws.conftest import client, create_event_tap, create_topic, sent_notifications

pytestmark = pytest.mark.usefixtures("aws")

SCHEDULE_ID = "6f1c1d1e-0000-4000-8000-000000000001"
# Far enough ahead for any number of calls, unless a test says otherwise.
LATER = 1e12


def _alert(row_id: int = 1, flag_key: str = "checkout-v2") -> ClaimedMessage:
    return ClaimedMessage(
        id=row_id,
        message_id=f"alert:{SCHEDULE_ID}:{row_id}",
        kind=MessageKind.ALERT,
        payload={
            "schedule_id": SCHEDULE_ID,
            "flag_key": flag_key,
            "environment": "production",
            "scheduled_at": "2026-03-01T09:00:00+00:00",
            "retry_count": 3,
            "error_class": "lock_timeout",
            "last_error": "lock_timeout: canceling statement due to lock timeout",
        },
        attempts=0,
    )


def _change(n: int = 0) -> ClaimedMessage:
    schedule_id = str(uuid4())
    return ClaimedMessage(
        id=100 + n,
        message_id=f"flag_changed:{schedule_id}:1",
        kind=MessageKind.FLAG_CHANGED,
        payload={
            "schedule_id": schedule_id,
            "flag_key": f"flag-{n}",
            "environment": "staging",
            "old": {"enabled": False},
            "new": {"enabled": True},
        },
        attempts=0,
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
    """A PutEvents client whose answers are scripted: a set of entry indexes to fail."""

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


def test_alerts_carry_their_stable_id_in_body_and_attributes() -> None:
    topic = create_topic()
    report = AwsNotifier(topic_arn=topic).send([_alert(1, "a"), _alert(2, "b")], deadline=LATER)
    assert report == SendReport(delivered=[1, 2])
    sent = sent_notifications(topic)
    assert [json.loads(n["message"])["flag_key"] for n in sent] == ["a", "b"]
    assert json.loads(sent[0]["message"]) == {
        "message_id": f"alert:{SCHEDULE_ID}:1",
        "schedule_id": SCHEDULE_ID,
        "flag_key": "a",
        "environment": "production",
        "retry_count": 3,
        "last_error": "lock_timeout: canceling statement due to lock timeout",
        "error_class": "lock_timeout",
        "scheduled_at": "2026-03-01T09:00:00+00:00",
    }
    assert sent[0]["subject"] == "flag-scheduler: a (production) failed permanently"
    assert sent[0]["attributes"]["message_id"] == {
        "Type": "String",
        "Value": f"alert:{SCHEDULE_ID}:1",
    }
    assert sent[0]["attributes"]["kind"]["Value"] == "alert"


def test_the_alert_of_a_ramp_stage_says_the_ramp_halted_and_names_it() -> None:
    topic = create_topic()
    alert = _alert(1, "checkout")
    ramp_id = "0b6b4a4e-2f4a-4f53-9d25-1a0c1e1b7f00"
    alert.payload.update({"ramp_id": ramp_id, "stage": 2, "error_class": "guard_alarm"})
    AwsNotifier(topic_arn=topic).send([alert], deadline=LATER)
    (sent,) = sent_notifications(topic)
    assert sent["subject"] == "flag-scheduler: ramp of checkout (production) halted at stage 2"
    body = json.loads(sent["message"])
    assert (body["ramp_id"], body["stage"], body["error_class"]) == (ramp_id, 2, "guard_alarm")


def test_a_digest_says_how_many_in_its_subject() -> None:
    topic = create_topic()
    digest = ClaimedMessage(
        id=7,
        message_id="digest:abc",
        kind=MessageKind.DIGEST,
        payload={"failures": 250, "by_error_class": {"expired": 250}},
        attempts=0,
    )
    AwsNotifier(topic_arn=topic).send([digest], deadline=LATER)
    (sent,) = sent_notifications(topic)
    assert sent["subject"] == "flag-scheduler: 250 schedules failed permanently"
    assert json.loads(sent["message"])["message_id"] == "digest:abc"


def test_subject_is_printable_ascii_of_at_most_100_characters() -> None:
    topic = create_topic()
    AwsNotifier(topic_arn=topic).send([_alert(1, "bannière-" + "x" * 120)], deadline=LATER)
    (sent,) = sent_notifications(topic)
    assert len(sent["subject"]) == 100
    assert sent["subject"].isascii()


def test_a_failed_alert_is_reported_and_logged_and_the_topic_is_not_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    missing = "arn:aws:sns:eu-west-1:123456789012:no-such-topic"
    with caplog.at_level(logging.ERROR):
        report = AwsNotifier(topic_arn=missing).send([_alert(1), _alert(2)], deadline=LATER)
    assert report.delivered == []
    assert list(report.failed) == [1]  # 2 was not tried: it waits for a later run
    assert "NotFound" in report.failed[1]
    (record,) = caplog.records
    assert (record.message, record.message_id) == ("alert_publish_failed", _alert(1).message_id)


def test_unconfigured_notifier_delivers_no_kind_and_creates_no_client() -> None:
    def refuse() -> Any:
        raise AssertionError("no client may be created")

    notifier = AwsNotifier(sns=refuse, events=refuse)
    assert notifier.kinds == frozenset()
    assert notifier.send([_alert(), _change()], deadline=LATER) == SendReport()
    assert AwsNotifier(topic_arn="t", bus_name="b").kinds == set(MessageKind)


def test_flag_changed_events_in_batches_of_at_most_ten_with_their_message_id() -> None:
    tap = create_event_tap()
    recording = _Recording(client("events"))
    notifier = AwsNotifier(bus_name=tap.bus_name, events=lambda: recording)
    changes = [_change(n) for n in range(23)]
    report = notifier.send(changes, deadline=LATER)
    assert recording.calls == [10, 10, 3]
    assert sorted(report.delivered) == sorted(c.id for c in changes)
    events = tap.received()
    assert sorted(e["detail"]["message_id"] for e in events) == sorted(
        c.message_id for c in changes
    )
    first = next(e for e in events if e["detail"]["flag_key"] == "flag-0")
    assert (first["source"], first["detail-type"]) == ("flag-scheduler", "FlagChanged")
    assert first["detail"] == {**changes[0].payload, "message_id": changes[0].message_id}


def test_failed_entries_are_reported_and_the_bus_rests_for_this_send(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = _Flaky([{1}])
    changes = [_change(n) for n in range(13)]
    with caplog.at_level(logging.ERROR):
        report = AwsNotifier(bus_name="bus", events=lambda: flaky).send(changes, deadline=LATER)
    assert len(flaky.calls) == 1  # the second batch of 3 waits for a later run
    assert report.delivered == [c.id for c in changes[:10] if c.id != changes[1].id]
    assert report.failed == {changes[1].id: "ThrottlingException: slow down"}
    (record,) = caplog.records
    assert (record.message, record.flag_key) == ("flag_event_failed", "flag-1")


def test_a_raising_call_fails_its_batch_only() -> None:
    flaky = _Flaky([ConnectionError("endpoint unreachable")])
    changes = [_change(n) for n in range(12)]
    report = AwsNotifier(bus_name="bus", events=lambda: flaky).send(changes, deadline=LATER)
    assert set(report.failed) == {c.id for c in changes[:10]}
    assert report.delivered == []


def test_no_call_starts_that_could_not_finish_before_the_deadline() -> None:
    topic = create_topic()
    tap = create_event_tap()
    now = [100.0]
    notifier = AwsNotifier(topic_arn=topic, bus_name=tap.bus_name, monotonic=lambda: now[0])
    report = notifier.send([_alert(), _change()], deadline=100.0 + CALL_BUDGET_SECONDS - 0.001)
    assert report == SendReport()
    assert sent_notifications(topic) == []
    assert tap.received() == []
    report = notifier.send([_alert(), _change()], deadline=100.0 + CALL_BUDGET_SECONDS)
    assert sorted(report.delivered) == [1, 100]
