"""The handler in its AWS configuration (moto): secret, outbox alerts and FlagChanged events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from flag_scheduler.aws import scheduler
from flag_scheduler.errors import ConfigurationError
from flag_scheduler.store.catalog import Catalog
from flag_scheduler_cli.local import FakeLambdaContext
from tests.aws.conftest import (
    create_event_tap,
    create_secret,
    create_topic,
    due_now,
    emf_record,
    outbox_rows,
    rds_secret_document,
    sent_notifications,
)
from tests.support import schedule_row

pytestmark = pytest.mark.usefixtures("aws")

EVENT = {"id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event"}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> pytest.MonkeyPatch:
    """The function's AWS configuration: the secret instead of DATABASE_URL."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.setenv("DB_SECRET_ARN", create_secret(rds_secret_document(database_url)))
    return monkeypatch


def test_alert_once_per_permanent_failure_and_an_event_per_applied_change(
    aws_env: pytest.MonkeyPatch,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = create_topic()
    tap = create_event_tap()
    aws_env.setenv("ALERT_TOPIC_ARN", topic)
    aws_env.setenv("FLAG_EVENTS_BUS_NAME", tap.bus_name)
    applied = due_now(catalog, "holiday-banner", {"enabled": True, "rollout_percentage": 50})
    invalid = due_now(catalog, "search-v3", {"rollout_percentage": 101})

    result = scheduler.lambda_handler(EVENT, FakeLambdaContext())
    assert (result["applied"], result["failed_permanently"]) == (1, 1)
    # A second run finds nothing due and sends nothing more.
    scheduler.lambda_handler(EVENT, FakeLambdaContext())

    (alert,) = sent_notifications(topic)
    message = json.loads(alert["message"])
    assert message["schedule_id"] == str(invalid)
    assert (message["flag_key"], message["environment"]) == ("search-v3", "production")
    assert message["error_class"] == "invalid_updates"
    assert message["last_error"] == schedule_row(conn, invalid).last_error
    assert message["message_id"] == f"alert:{invalid}:1"
    assert set(message) == {
        "message_id",
        "schedule_id",
        "flag_key",
        "environment",
        "retry_count",
        "last_error",
        "error_class",
        "scheduled_at",
    }

    (event,) = tap.received()
    assert (event["source"], event["detail-type"]) == ("flag-scheduler", "FlagChanged")
    assert event["detail"] == {
        "message_id": f"flag_changed:{applied}:1",
        "schedule_id": str(applied),
        "flag_key": "holiday-banner",
        "environment": "production",
        "old": {"enabled": False, "rollout_percentage": 0},
        "new": {"enabled": True, "rollout_percentage": 50},
    }
    assert schedule_row(conn, applied).status == "applied"
    assert outbox_rows(conn) == []


def test_undeliverable_notifications_leave_the_database_outcome_intact(
    aws_env: pytest.MonkeyPatch,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Neither the topic nor the bus exists: every publish fails.
    aws_env.setenv("ALERT_TOPIC_ARN", "arn:aws:sns:eu-west-1:123456789012:deleted-topic")
    aws_env.setenv("FLAG_EVENTS_BUS_NAME", "deleted-bus")
    applied = due_now(catalog, "checkout-v2", {"enabled": True})
    invalid = due_now(catalog, "legacy-api", {"colour": "red"})

    result = scheduler.lambda_handler(EVENT, FakeLambdaContext())

    assert (result["applied"], result["failed_permanently"]) == (1, 1)
    assert schedule_row(conn, applied).status == "applied"
    failed = schedule_row(conn, invalid)
    assert (failed.status, failed.next_retry_at) == ("failed", None)
    emf = emf_record(capsys)
    assert emf["AlertPublishFailures"] == [1.0]
    assert emf["FlagEventFailures"] == [1.0]
    assert emf["NotificationsDelivered"] == [0.0]
    # Not lost: both wait in the outbox for a later run, one attempt counted.
    assert emf["OutboxBacklog"] == [2.0]
    assert sorted(outbox_rows(conn)) == [
        (f"alert:{invalid}:1", "alert", 1),
        (f"flag_changed:{applied}:1", "flag_changed", 1),
    ]


def test_without_topic_or_bus_nothing_is_queued_and_zeros_are_reported(
    aws_env: pytest.MonkeyPatch,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    capsys: pytest.CaptureFixture[str],
) -> None:
    due_now(catalog, "quiet", {"enabled": True})
    due_now(catalog, "broken", {"enabled": "yes"})
    result = scheduler.lambda_handler(EVENT, FakeLambdaContext())
    assert (result["applied"], result["failed_permanently"]) == (1, 1)
    emf = emf_record(capsys)
    for name in (
        "AlertPublishFailures",
        "FlagEventFailures",
        "NotificationsDelivered",
        "NotificationsDiscarded",
        "OutboxBacklog",
    ):
        assert emf[name] == [0.0], name
    assert outbox_rows(conn) == []  # nobody would deliver them: never queued


def test_messages_left_for_a_channel_since_removed_are_discarded_after_a_day(
    aws_env: pytest.MonkeyPatch,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    capsys: pytest.CaptureFixture[str],
) -> None:
    aws_env.setenv("ALERT_TOPIC_ARN", "arn:aws:sns:eu-west-1:123456789012:deleted-topic")
    due_now(catalog, "broken", {"enabled": "yes"})
    scheduler.lambda_handler(EVENT, FakeLambdaContext())
    assert len(outbox_rows(conn)) == 1
    capsys.readouterr()

    scheduler.reset_container()  # a new deploy without the topic (or a local run)
    aws_env.delenv("ALERT_TOPIC_ARN")
    soon = datetime.now(UTC) + timedelta(hours=23)
    result = scheduler.run_invocation(FakeLambdaContext(), clock=lambda: soon)
    assert (result["notifications_discarded"], result["outbox_backlog"]) == (0, 1)
    later = datetime.now(UTC) + timedelta(hours=25)
    result = scheduler.run_invocation(FakeLambdaContext(), clock=lambda: later)
    assert (result["notifications_discarded"], result["outbox_backlog"]) == (1, 0)
    assert outbox_rows(conn) == []


def test_invalid_aws_setting_fails_before_any_schedule_is_touched(
    aws_env: pytest.MonkeyPatch, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    schedule = due_now(catalog, "untouched", {"enabled": True})
    aws_env.setenv("ALERT_TOPIC_ARN", "not-an-arn")
    with pytest.raises(ConfigurationError, match="ALERT_TOPIC_ARN must be an SNS topic ARN"):
        scheduler.lambda_handler(EVENT, FakeLambdaContext())
    assert schedule_row(conn, schedule).status == "pending"


def test_both_database_url_and_secret_is_a_configuration_error(
    aws_env: pytest.MonkeyPatch, database_url: str
) -> None:
    aws_env.setenv("DATABASE_URL", database_url)
    with pytest.raises(ConfigurationError, match="either DATABASE_URL or DB_SECRET_ARN"):
        scheduler.lambda_handler(EVENT, FakeLambdaContext())
