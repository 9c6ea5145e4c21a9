"""The outbox side of a run: each outcome's message is written in the outcome's transaction."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from flag_scheduler.engine.backoff import retry_delay
from flag_scheduler.engine.delivery import OUTBOX_BACKOFF, deliver_outbox
from flag_scheduler.engine.notifier import SendReport
from flag_scheduler.engine.records import ClaimedMessage, OutboxMessage
from flag_scheduler.engine.run_loop import RunPolicy, process_due_schedules
from flag_scheduler.engine.states import MessageKind
from flag_scheduler.store.catalog import Catalog
from flag_scheduler.store.repository import ScheduleRepository
from flag_scheduler_cli import fault_injection
from tests.support import T0, flag_fields, history, run_service, schedule_row


class _Queues:
    """A notifier that delivers `kinds` (this file only looks at what is queued)."""

    def __init__(self, kinds: frozenset[MessageKind] = frozenset(MessageKind)) -> None:
        self.kinds = kinds

    def send(self, messages: Sequence[ClaimedMessage], *, deadline: float) -> SendReport:
        raise AssertionError("the run itself never sends")


def _run(
    database_url: str, now: Any = T0, kinds: frozenset[MessageKind] = frozenset(MessageKind)
) -> None:
    with psycopg.connect(database_url, autocommit=True) as scheduler:
        process_due_schedules(
            ScheduleRepository(scheduler),
            _Queues(kinds),
            clock=lambda: now,
            remaining_ms=lambda: 60_000,
            policy=RunPolicy(max_retries=3, time_margin_ms=1_000, lock_timeout_ms=2_000),
        )


def _outbox(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        row[0]: (row[1], row[2])
        for row in conn.execute("SELECT message_id, kind, payload FROM notification_outbox")
    }


def test_each_outcome_queues_its_message_with_a_stable_id(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout")
    other = catalog.create_flag("search")
    flaky = catalog.create_flag("flaky")
    applied = catalog.create_schedule(flag, T0, {"enabled": True})
    invalid = catalog.create_schedule(other, T0, {"rollout_percentage": 101})
    retried = catalog.create_schedule(flaky, T0, {"enabled": True})
    superseded = catalog.create_schedule(flag, T0 - timedelta(minutes=1), {"enabled": False})
    # A retryable fault on one flag makes the batch fall back to a savepoint per schedule:
    # the fallback queues each message with its own outcome.
    fault_injection.set_fault(conn, flaky, "40001")

    _run(database_url)

    assert schedule_row(conn, retried).status == "failed"
    outbox = _outbox(conn)
    # A retry and a change applied earlier than a later one's (superseded) report nothing.
    assert set(outbox) == {
        f"flag_changed:{applied}:1",
        f"flag_changed:{superseded}:1",
        f"alert:{invalid}:1",
    }
    kind, payload = outbox[f"alert:{invalid}:1"]
    assert kind == "alert"
    assert payload["schedule_id"] == str(invalid)
    assert payload["error_class"] == "invalid_updates"
    assert payload["last_error"] == schedule_row(conn, invalid).last_error
    kind, payload = outbox[f"flag_changed:{applied}:1"]
    assert (kind, payload["old"], payload["new"]) == (
        "flag_changed",
        {"enabled": False},
        {"enabled": True},
    )


# Refuses to queue any message about one schedule, the way a full disk or a bad row would.
REFUSE_MESSAGE = """
CREATE FUNCTION refuse_message() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.message_id LIKE %(pattern)s THEN
        RAISE EXCEPTION USING ERRCODE = '23514', MESSAGE = 'message refused';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_message BEFORE INSERT ON notification_outbox
    FOR EACH ROW EXECUTE FUNCTION refuse_message();
"""


def test_an_outcome_whose_message_cannot_be_queued_is_not_committed_either(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flags = [catalog.create_flag(f"flag-{n}") for n in range(3)]
    schedules = [catalog.create_schedule(flag, T0, {"enabled": True}) for flag in flags]
    refused = schedules[1]
    conn.execute(REFUSE_MESSAGE.replace("%(pattern)s", f"'%{refused}%'"))

    _run(database_url)

    # The refused one's change is not committed without its message: its flag keeps its
    # value and, its outcome being unrecordable, it is parked (revision 0006's rule), not
    # applied; its neighbours applied, each with its message.
    row = schedule_row(conn, refused)
    assert (row.status, row.retry_count, row.applied_at) == ("failed", 0, None)
    assert history(conn, refused) == [(None, "failed_permanently", "unrecordable")]
    assert flag_fields(conn, flags[1])["enabled"] is False
    for schedule in (schedules[0], schedules[2]):
        assert schedule_row(conn, schedule).status == "applied"
    assert set(_outbox(conn)) == {
        f"flag_changed:{schedules[0]}:1",
        f"flag_changed:{schedules[2]}:1",
    }


def test_without_a_channel_nothing_is_queued(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    catalog.create_schedule(catalog.create_flag("a"), T0, {"enabled": True})
    catalog.create_schedule(catalog.create_flag("b"), T0, {"enabled": "yes"})
    summary = run_service(database_url, T0)  # NullNotifier: delivers no kind
    assert (summary.applied, summary.failed_permanently) == (1, 1)
    assert _outbox(conn) == {}


def test_a_requeued_schedule_reports_its_second_life_under_new_ids(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    schedule = catalog.create_schedule(catalog.create_flag("a"), T0, {"enabled": "yes"})
    _run(database_url)
    catalog.requeue(schedule, now=T0 + timedelta(minutes=5), actor="test")
    _run(database_url, T0 + timedelta(minutes=6))

    ids = sorted(_outbox(conn))
    assert len(ids) == 2
    assert ids[0] == f"alert:{schedule}:1"
    assert ids[1].startswith(f"alert:{schedule}:1:requeued-")


@pytest.mark.parametrize("kinds", [frozenset(), frozenset({MessageKind.FLAG_CHANGED})])
def test_only_the_kinds_someone_delivers_are_queued(
    database_url: str,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    kinds: frozenset[MessageKind],
) -> None:
    applied = catalog.create_schedule(catalog.create_flag("a"), T0, {"enabled": True})
    catalog.create_schedule(catalog.create_flag("b"), T0, {"enabled": "yes"})

    _run(database_url, kinds=kinds)
    expected = {f"flag_changed:{applied}:1"} if kinds else set()
    assert set(_outbox(conn)) == expected


class _Scripted:
    """A notifier whose answers are scripted per message id: delivered, failed or untried."""

    kinds = frozenset(MessageKind)

    def __init__(self, deliver: set[str], fail: set[str]) -> None:
        self.deliver, self.fail = deliver, fail
        self.sent: list[str] = []

    def send(self, messages: Sequence[ClaimedMessage], *, deadline: float) -> SendReport:
        self.sent += [m.message_id for m in messages]
        return SendReport(
            delivered=[m.id for m in messages if m.message_id in self.deliver],
            failed={m.id: "Boom: endpoint said no" for m in messages if m.message_id in self.fail},
        )


def _queue(conn: psycopg.Connection[Any], *ids: str) -> None:
    ScheduleRepository(conn).enqueue_messages(
        [OutboxMessage(i, MessageKind.FLAG_CHANGED, {"flag_key": i}) for i in ids], now=T0
    )


def _rows(conn: psycopg.Connection[Any]) -> dict[str, tuple[Any, ...]]:
    return {
        row[0]: tuple(row[1:])
        for row in conn.execute(
            "SELECT message_id, attempts, next_attempt_at, last_error FROM notification_outbox"
        )
    }


def test_delivery_deletes_what_went_out_and_backs_off_what_failed(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    _queue(conn, "ok", "bad", "later")
    notifier = _Scripted(deliver={"ok"}, fail={"bad"})
    now = T0 + timedelta(minutes=1)
    with psycopg.connect(database_url, autocommit=True) as scheduler:
        report = deliver_outbox(
            ScheduleRepository(scheduler),
            notifier,
            clock=lambda: now,
            deadline=time.monotonic() + 30,
            statement_timeout_ms=5_000,
        )
    assert (report.delivered, report.event_failures, report.backlog) == (1, 1, 2)
    rows = _rows(conn)
    assert set(rows) == {"bad", "later"}
    attempts, next_attempt_at, last_error = rows["bad"]
    assert (attempts, last_error) == (1, "Boom: endpoint said no")
    assert next_attempt_at == now + retry_delay(OUTBOX_BACKOFF, 0, "bad")  # keyed by its id
    assert timedelta(seconds=60) <= next_attempt_at - now <= timedelta(seconds=75)
    assert rows["later"] == (0, T0, None)  # not tried: due, uncharged
    assert notifier.sent == ["ok", "bad", "later"]  # its kind failed: not claimed again


def test_delivery_with_no_time_left_claims_nothing_but_counts_the_backlog(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    _queue(conn, "a", "b")
    notifier = _Scripted(deliver={"a", "b"}, fail=set())
    with psycopg.connect(database_url, autocommit=True) as scheduler:
        report = deliver_outbox(
            ScheduleRepository(scheduler),
            notifier,
            clock=lambda: T0,
            deadline=time.monotonic() - 1,
            statement_timeout_ms=5_000,
        )
    assert (report.stopped_for_time, report.delivered, report.backlog) == (True, 0, 2)
    assert notifier.sent == []
