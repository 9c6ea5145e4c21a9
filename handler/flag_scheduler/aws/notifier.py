"""Outbox messages to AWS: SNS alerts and digests, EventBridge FlagChanged events."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from flag_scheduler.aws.settings import SchedulerSettings
from flag_scheduler.engine.notifier import SendReport
from flag_scheduler.engine.records import ClaimedMessage
from flag_scheduler.engine.states import MessageKind

logger = logging.getLogger(__name__)

EVENT_SOURCE = "flag-scheduler"
EVENT_DETAIL_TYPE = "FlagChanged"
# PutEvents accepts at most 10 entries per call.
MAX_EVENTS_PER_CALL = 10
# SNS subjects are at most 100 printable ASCII characters.
MAX_SUBJECT_LENGTH = 100
# Each call is short and retried once by botocore: an endpoint that never answers costs at
# most CALL_BUDGET_SECONDS, and the outbox retries on a later run anyway.
CONNECT_TIMEOUT_SECONDS = 1
READ_TIMEOUT_SECONDS = 2
MAX_ATTEMPTS = 2
# The longest one call can take: every attempt timing out, plus botocore's retry backoff.
CALL_BUDGET_SECONDS = MAX_ATTEMPTS * (CONNECT_TIMEOUT_SECONDS + READ_TIMEOUT_SECONDS) + 1

_TOPIC_KINDS = frozenset({MessageKind.ALERT, MessageKind.DIGEST})


class SnsClient(Protocol):
    def publish(self, **kwargs: Any) -> Any: ...


class EventsClient(Protocol):
    def put_events(self, **kwargs: Any) -> Any: ...


class AwsNotifier:
    """Publishes alerts and digests to an SNS topic and FlagChanged events to a bus.

    Both are optional: without a topic or a bus the notifier delivers (and the run queues)
    nothing of that kind, and creates no client. Within one `send`, the first failure on a
    channel stops that channel (the rest waits for a later run), so a dead SNS cannot eat
    the time FlagChanged events need, nor the other way round.
    """

    def __init__(
        self,
        *,
        topic_arn: str | None = None,
        bus_name: str | None = None,
        sns: Callable[[], SnsClient] | None = None,
        events: Callable[[], EventsClient] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._topic_arn = topic_arn
        self._bus_name = bus_name
        self._make_sns = sns or client_factory("sns")
        self._make_events = events or client_factory("events")
        self._sns: SnsClient | None = None
        self._events: EventsClient | None = None
        self._monotonic = monotonic

    @classmethod
    def from_settings(cls, settings: SchedulerSettings) -> AwsNotifier:
        return cls(topic_arn=settings.alert_topic_arn, bus_name=settings.flag_events_bus_name)

    @property
    def kinds(self) -> frozenset[MessageKind]:
        kinds: set[MessageKind] = set()
        if self._topic_arn is not None:
            kinds |= _TOPIC_KINDS
        if self._bus_name is not None:
            kinds.add(MessageKind.FLAG_CHANGED)
        return frozenset(kinds)

    def send(self, messages: Sequence[ClaimedMessage], *, deadline: float) -> SendReport:
        report = SendReport()
        events = [m for m in messages if m.kind == MessageKind.FLAG_CHANGED]
        alerts = [m for m in messages if m.kind in _TOPIC_KINDS]
        if self._bus_name is not None:
            self._send_events(events, deadline, report)
        if self._topic_arn is not None:
            self._send_alerts(alerts, deadline, report)
        return report

    def _time_for_a_call(self, deadline: float) -> bool:
        return self._monotonic() + CALL_BUDGET_SECONDS <= deadline

    def _send_events(
        self, events: list[ClaimedMessage], deadline: float, report: SendReport
    ) -> None:
        for start in range(0, len(events), MAX_EVENTS_PER_CALL):
            if not self._time_for_a_call(deadline):
                return
            batch = events[start : start + MAX_EVENTS_PER_CALL]
            failed = self._put_events(batch)
            report.delivered += [m.id for m in batch if m.id not in failed]
            report.failed.update(failed)
            for message in batch:
                if message.id in failed:
                    logger.error(
                        "flag_event_failed",
                        extra={**_log_fields(message), "error": failed[message.id][:500]},
                    )
            if failed:
                return  # the bus is failing: the rest waits for a later run

    def _put_events(self, batch: list[ClaimedMessage]) -> dict[int, str]:
        """Send one PutEvents call; returns the row ids whose entries failed, with why."""
        entries = [
            {
                "Source": EVENT_SOURCE,
                "DetailType": EVENT_DETAIL_TYPE,
                "Detail": _body(message),
                "EventBusName": self._bus_name,
            }
            for message in batch
        ]
        try:
            if self._events is None:
                self._events = self._make_events()
            response = self._events.put_events(Entries=entries)
        except Exception as exc:  # reported per message, never raised
            return {message.id: f"{type(exc).__name__}: {exc}" for message in batch}
        if not response.get("FailedEntryCount"):
            return {}
        # Result entries are in the order of the request's entries.
        return {
            message.id: f"{result.get('ErrorCode')}: {result.get('ErrorMessage')}"
            for message, result in zip(batch, response.get("Entries", []), strict=False)
            if result.get("ErrorCode")
        }

    def _send_alerts(
        self, alerts: list[ClaimedMessage], deadline: float, report: SendReport
    ) -> None:
        for message in alerts:
            if not self._time_for_a_call(deadline):
                return
            try:
                if self._sns is None:
                    self._sns = self._make_sns()
                self._sns.publish(
                    TopicArn=self._topic_arn,
                    Subject=_subject(message),
                    Message=_body(message),
                    MessageAttributes=_attributes(message),
                )
            except Exception as exc:  # reported per message, never raised
                error = f"{type(exc).__name__}: {exc}"
                report.failed[message.id] = error
                logger.error(
                    "alert_publish_failed", extra={**_log_fields(message), "error": error[:500]}
                )
                return  # the topic is failing: the rest waits for a later run
            report.delivered.append(message.id)


def _attributes(message: ClaimedMessage) -> dict[str, dict[str, str]]:
    """SNS message attributes: subscribers filter on them and de-duplicate by message_id."""
    values = {"message_id": message.message_id, "kind": str(message.kind)}
    for name in ("environment", "error_class"):
        value = message.payload.get(name)
        if isinstance(value, str) and value:
            values[name] = value
    return {name: {"DataType": "String", "StringValue": value} for name, value in values.items()}


def _subject(message: ClaimedMessage) -> str:
    payload = message.payload
    if message.kind == MessageKind.DIGEST:
        text = f"flag-scheduler: {payload.get('failures')} schedules failed permanently"
    elif payload.get("ramp_id"):
        text = (
            f"flag-scheduler: ramp of {payload.get('flag_key')} ({payload.get('environment')})"
            f" halted at stage {payload.get('stage')}"
        )
    else:
        text = (
            f"flag-scheduler: {payload.get('flag_key')} ({payload.get('environment')})"
            " failed permanently"
        )
    printable = "".join(c if " " <= c <= "~" else "?" for c in text)
    return printable[:MAX_SUBJECT_LENGTH]


def _log_fields(message: ClaimedMessage) -> dict[str, object]:
    return {
        "message_id": message.message_id,
        "kind": str(message.kind),
        "schedule_id": message.payload.get("schedule_id"),
        "flag_key": message.payload.get("flag_key"),
        "environment": message.payload.get("environment"),
        "attempts": message.attempts,
    }


def client_factory(service: str) -> Callable[[], Any]:
    def make() -> Any:
        # Imported on first use: a container that never notifies never imports boto3.
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        config = Config(
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        )
        return boto3.client(service, config=config)

    return make


def _body(message: ClaimedMessage) -> str:
    """The message as consumers read it: its payload plus the id they de-duplicate on."""
    return json.dumps({**message.payload, "message_id": message.message_id}, sort_keys=True)
