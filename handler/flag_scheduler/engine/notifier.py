"""Delivering outbox messages: what a notifier promises, and one that delivers nothing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from flag_scheduler.engine.records import ClaimedMessage
from flag_scheduler.engine.states import MessageKind


@dataclass
class SendReport:
    """What one `send` did, by outbox row id; a message in neither was not tried."""

    delivered: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # row id -> why


class Notifier(Protocol):
    """Sends outbox messages to their channels (alerts, FlagChanged events)."""

    @property
    def kinds(self) -> frozenset[MessageKind]:
        """The kinds this notifier delivers; the run queues no other kind."""
        ...

    def send(self, messages: Sequence[ClaimedMessage], *, deadline: float) -> SendReport:
        """Send what can be sent before `deadline` (a time.monotonic() value).

        A call that could not finish before the deadline is not started. Never raises:
        failures are reported per message.
        """
        ...


class NullNotifier:
    """Delivers nothing, so nothing is queued: the default until a topic or bus is set."""

    @property
    def kinds(self) -> frozenset[MessageKind]:
        return frozenset()

    def send(self, messages: Sequence[ClaimedMessage], *, deadline: float) -> SendReport:
        return SendReport()
