"""Delivers the notification outbox after commit, within the invocation's remaining time."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from flag_scheduler.engine.backoff import BackoffPolicy, retry_delay
from flag_scheduler.engine.messages import ALERT_DIGEST_THRESHOLD, PendingAlert, digest_message
from flag_scheduler.engine.notifier import Notifier
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
# Jitter is keyed by a UUID (flag_scheduler.engine.backoff); a message's is derived from its id.
_JITTER_NAMESPACE = uuid.UUID("4f1f7a53-2f0c-4b59-9a3e-0d7c1b2e6a10")


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

    def count_outbox(self) -> int: ...


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
    """Send waiting outbox messages until none is due, or `deadline` (a monotonic time).

    Delivered messages are deleted; failed ones get one attempt more and a backoff; those
    not tried (no time left, or their channel failed earlier in this pass) stay due. More
    than `digest_threshold` waiting alerts are first folded into one digest; messages of a
    kind `notifier` cannot deliver are deleted once DISCARD_AFTER old. Never raises: what is
    not delivered now is delivered by a later run.
    """
    report = DeliveryReport()
    if monotonic() >= deadline:
        report.stopped_for_time = True
    else:
        try:
            _deliver(
                store,
                notifier,
                clock=clock,
                deadline=deadline,
                statement_timeout_ms=statement_timeout_ms,
                monotonic=monotonic,
                digest_threshold=digest_threshold,
                report=report,
            )
        except FlagSchedulerError as exc:
            logger.warning("outbox_delivery_failed", extra={"error": str(exc)[:500]})
    try:
        with store.transaction(
            lock_timeout_ms=statement_timeout_ms,
            statement_timeout_ms=statement_timeout_ms,
            idle_in_transaction_timeout_ms=statement_timeout_ms,
        ):
            report.backlog = store.count_outbox()
    except FlagSchedulerError as exc:
        logger.warning("outbox_backlog_unavailable", extra={"error": str(exc)[:500]})
    return report


def _deliver(
    store: OutboxStore,
    notifier: Notifier,
    *,
    clock: Clock,
    deadline: float,
    statement_timeout_ms: int,
    monotonic: Callable[[], float],
    digest_threshold: int,
    report: DeliveryReport,
) -> None:
    def transaction() -> AbstractContextManager[None]:
        # Sending happens inside the claim's transaction (its row locks keep other runs off
        # these messages): statements end by the deadline, and the server ends the session
        # if it idles 5 s past it (a run killed mid-send).
        window_ms = max(1, int((deadline - monotonic()) * 1000))
        return store.transaction(
            lock_timeout_ms=LOCK_TIMEOUT_MS,
            statement_timeout_ms=max(1, min(statement_timeout_ms, window_ms)),
            idle_in_transaction_timeout_ms=window_ms + 5_000,
        )

    kinds = set(notifier.kinds)
    with transaction():
        report.discarded = store.discard_messages(keep=kinds, before=clock() - DISCARD_AFTER)
    if report.discarded:
        logger.warning(
            "notifications_discarded",
            extra={"messages": report.discarded, "reason": "no topic or bus for their kind"},
        )
    if MessageKind.ALERT in kinds:
        with transaction():
            _fold_alerts(store, clock(), digest_threshold, report)
    while kinds:
        if monotonic() >= deadline:
            # Claiming now would lock rows only to send none of them.
            report.stopped_for_time = True
            return
        now = clock()
        with transaction():
            claimed = store.claim_messages(now, kinds=kinds, limit=CLAIM_LIMIT)
            if not claimed:
                return
            sent = notifier.send(claimed, deadline=deadline)
            store.delete_messages(sent.delivered)
            store.reschedule_messages(_retries(claimed, sent.failed, now), now=now)
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
        # A kind that did not all go out failed or ran out of time: no more of it this run.
        kinds -= {m.kind for m in claimed if m.id not in delivered}
        if not delivered:
            return


def _retries(
    claimed: Sequence[ClaimedMessage], failed: dict[int, str], now: datetime
) -> list[tuple[int, datetime, str]]:
    """(row id, next attempt at, error) of each failed message."""
    return [
        (
            message.id,
            now + retry_delay(OUTBOX_BACKOFF, message.attempts, _jitter_key(message)),
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


def _jitter_key(message: ClaimedMessage) -> uuid.UUID:
    return uuid.uuid5(_JITTER_NAMESPACE, message.message_id)
