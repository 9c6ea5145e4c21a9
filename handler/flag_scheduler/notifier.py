"""Side effects after commit: alerts for permanent failures and flag-change events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from flag_scheduler.models import FlagChange, PermanentFailure


class Notifier(Protocol):
    """Told about outcomes once they are committed; must never raise."""

    def schedules_failed_permanently(self, failures: Sequence[PermanentFailure]) -> None: ...

    def flags_changed(self, changes: Sequence[FlagChange]) -> None: ...


class NullNotifier:
    """Sends nothing: the default until alerts and events are configured."""

    def schedules_failed_permanently(self, failures: Sequence[PermanentFailure]) -> None:
        return None

    def flags_changed(self, changes: Sequence[FlagChange]) -> None:
        return None
