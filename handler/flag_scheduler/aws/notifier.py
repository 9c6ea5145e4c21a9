"""SNS alerts for permanent failures and EventBridge FlagChanged events, sent after commit."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from flag_scheduler.aws.settings import AwsSettings
from flag_scheduler.models import FlagChange, PermanentFailure

logger = logging.getLogger(__name__)

EVENT_SOURCE = "flag-scheduler"
EVENT_DETAIL_TYPE = "FlagChanged"
# PutEvents accepts at most 10 entries per call.
MAX_EVENTS_PER_CALL = 10
# SNS subjects are at most 100 printable ASCII characters.
MAX_SUBJECT_LENGTH = 100


class SnsClient(Protocol):
    def publish(self, **kwargs: Any) -> Any: ...


class EventsClient(Protocol):
    def put_events(self, **kwargs: Any) -> Any: ...


@dataclass
class DeliveryFailures:
    """Notifications that could not be delivered since the last `take_failures`."""

    alerts: int = 0
    events: int = 0


class AwsNotifier:
    """Publishes one SNS alert per permanent failure and one FlagChanged event per change.

    Both are optional: without a topic or a bus the notifier sends nothing and creates no
    client. Delivery failures are logged and counted, never raised: the database outcome is
    already committed and must not be undone or hidden by a notification problem.
    """

    def __init__(
        self,
        *,
        topic_arn: str | None = None,
        bus_name: str | None = None,
        sns: Callable[[], SnsClient] | None = None,
        events: Callable[[], EventsClient] | None = None,
    ) -> None:
        self._topic_arn = topic_arn
        self._bus_name = bus_name
        self._make_sns = sns or _client_factory("sns")
        self._make_events = events or _client_factory("events")
        self._sns: SnsClient | None = None
        self._events: EventsClient | None = None
        self._failures = DeliveryFailures()

    @classmethod
    def from_settings(cls, settings: AwsSettings) -> AwsNotifier:
        return cls(topic_arn=settings.alert_topic_arn, bus_name=settings.flag_events_bus_name)

    def take_failures(self) -> DeliveryFailures:
        """The failures counted since the last call (the handler reports them per run)."""
        failures, self._failures = self._failures, DeliveryFailures()
        return failures

    def schedules_failed_permanently(self, failures: Sequence[PermanentFailure]) -> None:
        if self._topic_arn is None or not failures:
            return
        for failure in failures:
            try:
                if self._sns is None:
                    self._sns = self._make_sns()
                self._sns.publish(
                    TopicArn=self._topic_arn,
                    Subject=_subject(failure),
                    Message=json.dumps(alert_message(failure), sort_keys=True),
                    MessageAttributes={
                        "environment": {"DataType": "String", "StringValue": failure.environment},
                        "error_class": {"DataType": "String", "StringValue": failure.error_class},
                    },
                )
            except Exception as exc:  # any failure here must not end the run
                self._failures.alerts += 1
                logger.error(
                    "alert_publish_failed",
                    extra={
                        "schedule_id": str(failure.schedule_id),
                        "flag_key": failure.flag_key,
                        "environment": failure.environment,
                        "error_class": type(exc).__name__,
                        "error": str(exc)[:500],
                    },
                )

    def flags_changed(self, changes: Sequence[FlagChange]) -> None:
        if self._bus_name is None or not changes:
            return
        for start in range(0, len(changes), MAX_EVENTS_PER_CALL):
            batch = list(changes[start : start + MAX_EVENTS_PER_CALL])
            # Entries that failed (throttling, an internal error) are sent once more.
            failed = self._put_events(batch)
            if failed:
                failed = self._put_events([change for change, _ in failed])
            for change, error in failed:
                self._failures.events += 1
                logger.error(
                    "flag_event_failed",
                    extra={
                        "schedule_id": str(change.schedule_id),
                        "flag_key": change.flag_key,
                        "environment": change.environment,
                        "error": error[:500],
                    },
                )

    def _put_events(self, batch: list[FlagChange]) -> list[tuple[FlagChange, str]]:
        """Send one PutEvents call; returns the changes whose entries failed, with why."""
        entries = [
            {
                "Source": EVENT_SOURCE,
                "DetailType": EVENT_DETAIL_TYPE,
                "Detail": json.dumps(event_detail(change), sort_keys=True),
                "EventBusName": self._bus_name,
            }
            for change in batch
        ]
        try:
            if self._events is None:
                self._events = self._make_events()
            response = self._events.put_events(Entries=entries)
        except Exception as exc:  # counted and logged by the caller
            return [(change, f"{type(exc).__name__}: {exc}") for change in batch]
        if not response.get("FailedEntryCount"):
            return []
        # Result entries are in the order of the request's entries.
        return [
            (change, f"{result.get('ErrorCode')}: {result.get('ErrorMessage')}")
            for change, result in zip(batch, response.get("Entries", []), strict=False)
            if result.get("ErrorCode")
        ]


def alert_message(failure: PermanentFailure) -> dict[str, Any]:
    """The JSON body of a permanent-failure alert."""
    return {
        "schedule_id": str(failure.schedule_id),
        "flag_key": failure.flag_key,
        "environment": failure.environment,
        "retry_count": failure.retry_count,
        "last_error": failure.last_error,
        "error_class": failure.error_class,
        "scheduled_at": failure.scheduled_at.isoformat(),
    }


def event_detail(change: FlagChange) -> dict[str, Any]:
    """The `detail` of a FlagChanged event: the fields this schedule changed."""
    return {
        "schedule_id": str(change.schedule_id),
        "flag_key": change.flag_key,
        "environment": change.environment,
        "old": change.old,
        "new": change.new,
    }


def _subject(failure: PermanentFailure) -> str:
    text = f"flag-scheduler: {failure.flag_key} ({failure.environment}) failed permanently"
    printable = "".join(c if " " <= c <= "~" else "?" for c in text)
    return printable[:MAX_SUBJECT_LENGTH]


def _client_factory(service: str) -> Callable[[], Any]:
    def make() -> Any:
        # Imported on first use: a container that never notifies never imports boto3.
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        # Bounded: a slow endpoint must not eat the run's time budget.
        config = Config(
            connect_timeout=3, read_timeout=5, retries={"mode": "standard", "max_attempts": 3}
        )
        return boto3.client(service, config=config)

    return make
