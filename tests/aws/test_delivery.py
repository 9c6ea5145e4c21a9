"""The notification outbox end to end: a silent endpoint, SIGKILL, digests, concurrent runs.

SNS and EventBridge are a moto server (other processes reach it through AWS_ENDPOINT_URL);
events are read back through a rule -> SQS target, SNS messages from moto's backend.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flag_scheduler.aws import scheduler
from flag_scheduler.engine.messages import ALERT_DIGEST_THRESHOLD, DIGEST_LISTED_SCHEDULES
from flag_scheduler.engine.records import OutboxMessage
from flag_scheduler.engine.states import MessageKind
from flag_scheduler.errors import SystemicFailure
from flag_scheduler.store.catalog import Catalog
from flag_scheduler.store.repository import ScheduleRepository
from flag_scheduler_cli import fault_injection
from flag_scheduler_cli.local import FakeLambdaContext
from tests.aws.conftest import (
    ACCOUNT,
    REGION,
    EventTap,
    SilentEndpoint,
    create_event_tap,
    create_topic,
    due_now,
    emf_record,
    outbox_rows,
    sent_notifications,
)
from tests.support import insert_ramp, schedule_row

EVENT = {"id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event"}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, database_url: str, moto_server: str) -> pytest.MonkeyPatch:
    """The handler on the test database, its AWS calls going to the moto server."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.delenv("DB_SECRET_ARN", raising=False)
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    return monkeypatch


def _alert_ids(topic: str) -> list[str]:
    return [json.loads(n["message"])["message_id"] for n in sent_notifications(topic)]


def _event_ids(tap: EventTap) -> list[str]:
    return [e["detail"]["message_id"] for e in tap.received()]


def test_a_silent_sns_endpoint_cannot_make_the_run_overrun_its_budget(
    env: pytest.MonkeyPatch,
    silent_endpoint: SilentEndpoint,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tap = create_event_tap()
    env.setenv("ALERT_TOPIC_ARN", f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts")
    env.setenv("AWS_ENDPOINT_URL_SNS", silent_endpoint.url)  # accepts, never answers
    env.setenv("FLAG_EVENTS_BUS_NAME", tap.bus_name)
    failing = [due_now(catalog, f"broken-{n}", {"enabled": "yes"}) for n in range(4)]
    applied = due_now(catalog, "fine", {"enabled": True})

    started = time.monotonic()
    result = scheduler.lambda_handler(EVENT, FakeLambdaContext(timeout_seconds=20))
    elapsed = time.monotonic() - started

    # Delivery stops at the 10 s margin before the 20 s timeout, never later.
    assert elapsed < 20 - 10 + 2, f"the invocation took {elapsed:.1f} s of a 20 s budget"
    assert silent_endpoint.connections, "SNS was never even tried"
    assert (result["failed_permanently"], result["applied"]) == (4, 1)
    for schedule in failing:
        assert (
            schedule_row(conn, schedule).status,
            schedule_row(conn, schedule).next_retry_at,
        ) == (
            "failed",
            None,
        )
    # The dead topic did not starve the bus: the event went out and left the outbox.
    assert _event_ids(tap) == [f"flag_changed:{applied}:1"]
    waiting = outbox_rows(conn)
    assert sorted(message_id for message_id, _, _ in waiting) == sorted(
        f"alert:{schedule}:1" for schedule in failing
    )
    # One publish was tried and charged; the topic then rested, the others wait untried.
    assert sorted(attempts for _, _, attempts in waiting) == [0, 0, 0, 1]
    emf = emf_record(capsys)
    assert emf["AlertPublishFailures"] == [1.0]
    assert emf["NotificationsDelivered"] == [1.0]
    assert emf["OutboxBacklog"] == [4.0]
    assert emf["SchedulesFailedPermanently"] == [4.0]


# What a handler process runs with a fault point the test controls: SIGKILL exactly
# between the batch's commit and any delivery (`before`), or right after the first send
# returned and before its deliveries are recorded (`mid`).
KILLED_RUN = """
import os, signal, sys
from flag_scheduler.engine import delivery
from flag_scheduler.aws import scheduler
from flag_scheduler.aws import notifier
from flag_scheduler_cli.local import FakeLambdaContext

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[1] == "before":
    delivery.deliver_outbox = die
else:
    send = notifier.AwsNotifier.send
    def send_then_die(self, *args, **kwargs):
        send(self, *args, **kwargs)
        die()
    notifier.AwsNotifier.send = send_then_die
scheduler.lambda_handler({}, FakeLambdaContext())
"""


def _killed_run(where: str) -> None:
    process = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, where],
        env={
            **os.environ,
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr


@pytest.mark.slow
def test_a_run_killed_after_commit_loses_no_message(
    env: pytest.MonkeyPatch, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    topic = create_topic()
    tap = create_event_tap()
    env.setenv("ALERT_TOPIC_ARN", topic)
    env.setenv("FLAG_EVENTS_BUS_NAME", tap.bus_name)
    env.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    failing = [due_now(catalog, f"broken-{n}", {"rollout_percentage": 101}) for n in range(3)]
    applied = [due_now(catalog, f"fine-{n}", {"enabled": True}) for n in range(12)]
    alerts = {f"alert:{s}:1" for s in failing}
    events = {f"flag_changed:{s}:1" for s in applied}

    _killed_run("before")

    # The outcomes committed with their messages; nothing went out.
    assert {schedule_row(conn, s).status for s in applied} == {"applied"}
    assert {schedule_row(conn, s).status for s in failing} == {"failed"}
    assert {message_id for message_id, _, _ in outbox_rows(conn)} == alerts | events
    assert _alert_ids(topic) == []
    assert _event_ids(tap) == []

    result = scheduler.lambda_handler(EVENT, FakeLambdaContext())

    assert result["claimed"] == 0  # nothing to apply: only the notifications were missing
    assert result["notifications_delivered"] == len(alerts | events)
    assert Counter(_alert_ids(topic)) == Counter(alerts)  # each exactly once
    assert Counter(_event_ids(tap)) == Counter(events)
    assert outbox_rows(conn) == []


@pytest.mark.slow
def test_a_run_killed_mid_delivery_resends_only_its_unrecorded_sends(
    env: pytest.MonkeyPatch, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    tap = create_event_tap()
    env.setenv("FLAG_EVENTS_BUS_NAME", tap.bus_name)
    env.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    applied = [due_now(catalog, f"fine-{n:02d}", {"enabled": True}) for n in range(60)]
    events = {f"flag_changed:{s}:1" for s in applied}

    _killed_run("mid")  # dies after sending the first claim (50), before recording it

    first = _event_ids(tap)
    assert len(first) == 50
    assert len(outbox_rows(conn)) == 60

    scheduler.lambda_handler(EVENT, FakeLambdaContext())

    second = _event_ids(tap)
    # At least once: every event arrived; the only repeats are the killed claim's sends,
    # with the same message_id, for consumers to drop.
    assert set(first) | set(second) == events
    assert Counter(first + second) == Counter(
        {**dict.fromkeys(events, 1), **dict.fromkeys(first, 2)}
    )
    assert outbox_rows(conn) == []


def test_a_mass_failure_sends_one_digest(
    env: pytest.MonkeyPatch,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = create_topic()
    env.setenv("ALERT_TOPIC_ARN", topic)
    # A mass failure: 26 schedules fail permanently in one run.
    failing = [due_now(catalog, f"broken-{n:02d}", {"enabled": "yes"}) for n in range(20)]
    failing += [due_now(catalog, f"odd-{n}", {"rollout_percentage": -1}) for n in range(6)]
    # And two ramps whose first stage expires (an outage longer than the lateness limit).
    late = datetime.now(UTC) - timedelta(days=2)
    ramps = [insert_ramp(conn, catalog.create_flag(f"ramp-{n}"), late, [5, 50]) for n in (0, 1)]

    result = scheduler.lambda_handler(EVENT, FakeLambdaContext())

    assert result["failed_permanently"] == 28  # the expired stages counted among them
    (digest,) = sent_notifications(topic)
    body = json.loads(digest["message"])
    assert digest["subject"] == "flag-scheduler: 28 schedules failed permanently"
    assert body["failures"] == 28
    assert body["by_error_class"] == {"invalid_updates": 26, "expired": 2}
    assert body["by_environment"] == {"production": 28}
    assert len(body["schedule_ids"]) == DIGEST_LISTED_SCHEDULES
    assert body["more_schedules"] == 28 - DIGEST_LISTED_SCHEDULES
    # Folded, a halted ramp is still named, with its stage.
    stages = dict(
        conn.execute(
            "SELECT ramp_id::text, id::text FROM feature_flag_schedules WHERE ramp_id IS NOT NULL"
        ).fetchall()
    )
    assert sorted(body["halted_ramps"], key=lambda r: r["ramp_id"]) == [
        {
            "ramp_id": str(r),
            "flag_key": f"ramp-{ramps.index(r)}",
            "environment": "production",
            "stage": 0,
            "schedule_id": stages[str(r)],
            "error_class": "expired",
        }
        for r in sorted(ramps, key=str)
    ]
    assert body["more_halted_ramps"] == 0
    assert body["message_id"].startswith("digest:")
    assert result["alerts_folded"] == 28
    assert outbox_rows(conn) == []
    assert emf_record(capsys)["NotificationsDelivered"] == [1.0]


def test_up_to_the_threshold_each_failure_has_its_own_alert(
    env: pytest.MonkeyPatch, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    topic = create_topic()
    env.setenv("ALERT_TOPIC_ARN", topic)
    failing = [
        due_now(catalog, f"broken-{n:02d}", {"enabled": "yes"})
        for n in range(ALERT_DIGEST_THRESHOLD)
    ]
    scheduler.lambda_handler(EVENT, FakeLambdaContext())
    assert sorted(_alert_ids(topic)) == sorted(f"alert:{s}:1" for s in failing)


# Holds every delivered message's DELETE until the test opens the gate (a loop, not a lock
# wait: delivery's lock_timeout must not end it), so both runs are seen mid-delivery at once.
GATED_DELETES = """
CREATE TABLE outbox_gate (opened boolean);
CREATE FUNCTION gated_outbox_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WHILE NOT EXISTS (SELECT 1 FROM outbox_gate) LOOP
        PERFORM pg_sleep(0.01);
    END LOOP;
    RETURN OLD;
END $$;
CREATE TRIGGER gated_outbox_delete BEFORE DELETE ON notification_outbox
    FOR EACH ROW EXECUTE FUNCTION gated_outbox_delete();
"""


def _wait_for_deleting_sessions(
    conn: psycopg.Connection[Any], count: int, processes: list[subprocess.Popen[str]]
) -> None:
    deadline = time.monotonic() + 60
    while True:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
            " AND query LIKE '%DELETE FROM notification_outbox%' AND pid <> pg_backend_pid()"
        ).fetchone()
        if row == (count,):
            return
        for process in processes:
            assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"never saw {count} runs delivering at once"
        time.sleep(0.05)


@pytest.mark.slow
def test_two_runs_delivering_at_once_never_send_a_message_twice(
    env: pytest.MonkeyPatch, conn: psycopg.Connection[Any]
) -> None:
    tap = create_event_tap()
    env.setenv("FLAG_EVENTS_BUS_NAME", tap.bus_name)
    env.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    messages = [
        OutboxMessage(
            message_id=f"flag_changed:{n:04d}",
            kind=MessageKind.FLAG_CHANGED,
            payload={"schedule_id": str(n), "flag_key": f"flag-{n}", "old": {}, "new": {}},
        )
        for n in range(200)
    ]
    ScheduleRepository(conn).enqueue_messages(messages, now=datetime.now(UTC))
    conn.execute(GATED_DELETES)

    invokers = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "bench_invoker.py"), str(time.time()), "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    # Both have claimed a share and sent it, and wait to record it: the claims overlapped.
    _wait_for_deleting_sessions(conn, 2, invokers)
    conn.execute("INSERT INTO outbox_gate VALUES (true)")
    results = []
    for process in invokers:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        results.append(json.loads(stdout.strip().splitlines()[-1]))

    # Each message was claimed and recorded as delivered by exactly one run: two runs
    # sending the same claim would both count it.
    delivered = [r["notifications_delivered"] for r in results]
    assert sum(delivered) == 200
    assert min(delivered) >= 50, delivered  # each recorded at least its first claim
    # Every message arrived. (Not "exactly once" on the wire: on a loaded machine botocore
    # may retry a PutEvents whose answer timed out after the bus took it; that duplicate is
    # what the stable message_id is for, and no outbox design can prevent it.)
    received = _event_ids(tap)
    assert set(received) == {m.message_id for m in messages}
    assert outbox_rows(conn) == []


def test_an_outage_stop_still_delivers_what_its_batches_committed(
    env: pytest.MonkeyPatch,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = create_topic()
    env.setenv("ALERT_TOPIC_ARN", topic)
    env.setenv("FLAG_SCHEDULE_MAX_RETRIES", "0")  # each lock timeout fails for good
    flags = [catalog.create_flag(f"locked-{n}") for n in range(5)]
    due = datetime.now(UTC) - timedelta(minutes=1)
    schedules = [catalog.create_schedule(flag, due, {"enabled": True}) for flag in flags]
    for flag in flags:
        fault_injection.set_fault(conn, flag, "55P03")

    with pytest.raises(SystemicFailure):
        scheduler.lambda_handler(EVENT, FakeLambdaContext())

    # The invocation fails (the outage alarm's job), but the alerts its committed outcomes
    # queued go out in the same invocation, and their metrics are flushed.
    assert sorted(_alert_ids(topic)) == sorted(f"alert:{s}:1" for s in schedules)
    emf = emf_record(capsys)
    assert emf["RunFailed"] == [1.0]
    assert emf["NotificationsDelivered"] == [5.0]
    assert emf["OutboxBacklog"] == [0.0]
