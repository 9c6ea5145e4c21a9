"""Delivers the notification outbox after commit, within the invocation's remaining time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from flag_scheduler.engine.backoff import BackoffPolicy, retry_delay
from flag_scheduler.engine.budget import statement_budget_ms
from flag_scheduler.engine.messages import ALERT_DIGEST_THRESHOLD, PendingAlert, digest_message
from flag_scheduler.engine.notifier import Notifier, SendReport
from flag_scheduler.engine.records import ClaimedMessage, OutboxMessage
from flag_scheduler.engine.states import MessageKind
from flag_scheduler.errors import FlagSchedulerError

logger = logging.getLogger(__name__)

# Runs come every minute, so the first retry is the next run or the one after; an endpoint
# down for long is tried every 15 minutes or so, and the backlog alarm says why.
OUTBOX_BACKOFF = BackoffPolicy(base_seconds=60, cap_seconds=900, jitter_seconds=15)
# Messages claimed per transaction: a run killed mid-send re-sends at most this many.
CLAIM_LIMIT = 50
# Claims use SKIP LOCKED and deletes touch only claimed rows: nothing should wait at all.
LOCK_TIMEOUT_MS = 1_000
# A message of a kind this run cannot deliver is deleted only once it is this old: a run
# without a topic or bus (`flag-scheduler invoke` pointed at a shared database) must not
# throw away what the deployed function is about to send; leftovers of a topic or bus since
# removed go after a day (OutboxBacklogAlarm fires meanwhile).
DISCARD_AFTER = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Backlogs:
    """What waits after a run: outbox messages, and schedules waiting for a retry."""

    outbox: int
    retries: int


class Clock(Protocol):
    def __call__(self) -> datetime: ...


class OutboxStore(Protocol):
    """What delivery needs from storage (flag_scheduler.store.repository implements it)."""

    def transaction(
        self,
        *,
        lock_timeout_ms: int,
        statement_timeout_ms: int,
        idle_in_transaction_timeout_ms: int,
    ) -> AbstractContextManager[None]: ...

    def discard_messages(self, *, keep: Collection[MessageKind], before: datetime) -> int: ...

    def lock_waiting_alerts(self) -> list[PendingAlert]: ...

    def enqueue_messages(self, messages: Sequence[OutboxMessage], *, now: datetime) -> None: ...

    def delete_messages(self, ids: Sequence[int]) -> None: ...

    def claim_messages(
        self, now: datetime, *, kinds: Collection[MessageKind], limit: int
    ) -> list[ClaimedMessage]: ...

    def reschedule_messages(
        self, failures: Sequence[tuple[int, datetime, str]], *, now: datetime
    ) -> None: ...

    def count_backlogs(self) -> Backlogs: ...


@dataclass
class DeliveryReport:
    """What one delivery pass did, for the handler's metrics and summary."""

    delivered: int = 0
    alert_failures: int = 0  # alerts and digests whose publish failed
    event_failures: int = 0  # FlagChanged events whose PutEvents entry failed
    discarded: int = 0  # waiting messages of a kind nothing delivers any more
    folded: int = 0  # alerts replaced by one digest
    stopped_for_time: bool = False
    backlog: int | None = None  # messages still waiting; None if it could not be counted
    retry_backlog: int | None = None  # schedules waiting for a retry; None as above

    def as_dict(self) -> dict[str, Any]:
        return {
            "notifications_delivered": self.delivered,
            "notification_failures": self.alert_failures + self.event_failures,
            "notifications_discarded": self.discarded,
            "alerts_folded": self.folded,
            "delivery_stopped_for_time": self.stopped_for_time,
            "outbox_backlog": self.backlog,
        }


def deliver_outbox(
    store: OutboxStore,
    notifier: Notifier,
    *,
    clock: Clock,
    deadline: float,
    statement_timeout_ms: int,
    monotonic: Callable[[], float] = time.monotonic,
    digest_threshold: int = ALERT_DIGEST_THRESHOLD,
) -> DeliveryReport:
    """Send waiting outbox messages until none is due, or `deadline` (a monotonic time), then
    count what still waits: messages, and schedules waiting for a retry.

    Delivered messages are deleted; failed ones get one attempt more and a backoff; those
    not tried (no time left, or their channel failed earlier in this pass) stay due. More
    than `digest_threshold` waiting alerts are first folded into one digest; messages of a
    kind `notifier` cannot deliver are deleted once DISCARD_AFTER old. Never raises: what is
    not delivered now is delivered by a later run, a count that fails is None.
    """
    report = DeliveryReport()
    window = _Window(store, deadline, statement_timeout_ms, monotonic)
    try:
        _deliver(store, notifier, clock, window, digest_threshold, report)
    except FlagSchedulerError as exc:
        logger.warning("outbox_delivery_failed", extra={"error": str(exc)[:500]})
    try:
        # One short transaction for both gauges, its statement ending by the deadline.
        with window.transaction():
            backlogs = store.count_backlogs()
        report.backlog, report.retry_backlog = backlogs.outbox, backlogs.retries
    except FlagSchedulerError as exc:
        logger.warning("backlogs_unavailable", extra={"error": str(exc)[:500]})
    return report


@dataclass(frozen=True)
class _Window:
    """The transactions of one delivery pass, each bounded by the pass's deadline."""

    store: OutboxStore
    deadline: float
    statement_timeout_ms: int
    monotonic: Callable[[], float]

    def closed(self) -> bool:
        return self.monotonic() >= self.deadline

    def transaction(self) -> AbstractContextManager[None]:
        # Sending happens inside the claim's transaction (its row locks keep other runs off
        # these messages): statements end by the deadline, and the server ends the session
        # if it idles 5 s past it (a run killed mid-send).
        window_ms = int((self.deadline - self.monotonic()) * 1000)
        return self.store.transaction(
            lock_timeout_ms=LOCK_TIMEOUT_MS,
            statement_timeout_ms=statement_budget_ms(
                self.statement_timeout_ms, window_ms=window_ms
            ),
            idle_in_transaction_timeout_ms=max(1, window_ms) + 5_000,
        )


def _deliver(
    store: OutboxStore,
    notifier: Notifier,
    clock: Clock,
    window: _Window,
    digest_threshold: int,
    report: DeliveryReport,
) -> None:
    """Claim and send until nothing is due, time is up, or no kind is left to try. The
    first transaction also clears out what nothing delivers and folds a flood of alerts."""
    kinds = set(notifier.kinds)
    first = True
    while first or kinds:
        if window.closed():
            # Claiming now would lock rows only to send none of them.
            report.stopped_for_time = True
            return
        now = clock()
        with window.transaction():
            if first:
                _tidy(store, kinds, now, digest_threshold, report)
                first = False
            claimed = store.claim_messages(now, kinds=kinds, limit=CLAIM_LIMIT) if kinds else []
            sent = notifier.send(claimed, deadline=window.deadline) if claimed else SendReport()
            store.delete_messages(sent.delivered)
            store.reschedule_messages(_retries(claimed, sent.failed, now), now=now)
        if not claimed:
            return
        # A kind that did not all go out failed or ran out of time: no more of it this run.
        kinds -= _tally(claimed, sent, report)
        if not sent.delivered:
            return


def _tidy(
    store: OutboxStore,
    kinds: Collection[MessageKind],
    now: datetime,
    digest_threshold: int,
    report: DeliveryReport,
) -> None:
    """Delete old messages of kinds nothing delivers; fold a flood of alerts into a digest."""
    report.discarded = store.discard_messages(keep=kinds, before=now - DISCARD_AFTER)
    if report.discarded:
        logger.warning(
            "notifications_discarded",
            extra={"messages": report.discarded, "reason": "no topic or bus for their kind"},
        )
    if MessageKind.ALERT in kinds:
        _fold_alerts(store, now, digest_threshold, report)


def _tally(
    claimed: Sequence[ClaimedMessage], sent: SendReport, report: DeliveryReport
) -> set[MessageKind]:
    """Count one claim's sends in `report`; returns the kinds not to claim again this pass."""
    delivered = set(sent.delivered)
    report.delivered += len(delivered)
    for message in claimed:
        if message.id in sent.failed:
            if message.kind == MessageKind.FLAG_CHANGED:
                report.event_failures += 1
            else:
                report.alert_failures += 1
    untried = [m for m in claimed if m.id not in delivered and m.id not in sent.failed]
    if untried and not sent.failed:
        report.stopped_for_time = True
    return {m.kind for m in claimed if m.id not in delivered}


def _retries(
    claimed: Sequence[ClaimedMessage], failed: dict[int, str], now: datetime
) -> list[tuple[int, datetime, str]]:
    """(row id, next attempt at, error) of each failed message; its id keys the jitter."""
    return [
        (
            message.id,
            now + retry_delay(OUTBOX_BACKOFF, message.attempts, message.message_id),
            failed[message.id],
        )
        for message in claimed
        if message.id in failed
    ]


def _fold_alerts(store: OutboxStore, now: datetime, threshold: int, report: DeliveryReport) -> None:
    """Replace the waiting alerts by one digest when there are more than `threshold`."""
    alerts = store.lock_waiting_alerts()
    if len(alerts) <= threshold:
        return
    digest = digest_message(alerts)
    store.delete_messages([alert.id for alert in alerts])
    store.enqueue_messages([digest], now=now)
    report.folded += len(alerts)
    logger.warning(
        "alerts_folded_into_digest",
        extra={"alerts": len(alerts), "message_id": digest.message_id},
    )
