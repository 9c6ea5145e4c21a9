"""Guard alarms of ramps: their states from CloudWatch, one DescribeAlarms call per batch."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from flag_scheduler.aws.notifier import client_factory
from flag_scheduler.engine.states import AlarmState
from flag_scheduler.errors import AlarmsUnavailable

logger = logging.getLogger(__name__)

# DescribeAlarms takes at most 100 names per call; a batch's ramps name at most 20 each.
MAX_NAMES_PER_CALL = 100


class CloudWatchClient(Protocol):
    def describe_alarms(self, **kwargs: Any) -> Any: ...


class CloudWatchAlarms:
    """flag_scheduler.engine.ramps.AlarmReader over CloudWatch (metric and composite
    alarms). The client is created on first use: a run without guarded stages never
    imports boto3."""

    def __init__(self, client: Callable[[], CloudWatchClient] | None = None) -> None:
        self._make_client = client or client_factory("cloudwatch")
        self._client: CloudWatchClient | None = None

    def alarm_states(self, names: Collection[str]) -> Mapping[str, AlarmState]:
        """The state of each named alarm that exists (missing ones are left out).

        Raises:
            AlarmsUnavailable: CloudWatch could not be asked or answered nonsense.
        """
        wanted = sorted(set(names))
        states: dict[str, AlarmState] = {}
        for start in range(0, len(wanted), MAX_NAMES_PER_CALL):
            states.update(self._describe(wanted[start : start + MAX_NAMES_PER_CALL]))
        return states

    def _describe(self, names: list[str]) -> dict[str, AlarmState]:
        try:
            if self._client is None:
                self._client = self._make_client()
            answer = self._client.describe_alarms(
                AlarmNames=names,
                AlarmTypes=["MetricAlarm", "CompositeAlarm"],
                MaxRecords=MAX_NAMES_PER_CALL,
            )
            found = [*answer.get("MetricAlarms", []), *answer.get("CompositeAlarms", [])]
            return {alarm["AlarmName"]: AlarmState(alarm["StateValue"]) for alarm in found}
        except Exception as exc:  # botocore raises many unrelated classes; all mean the same
            logger.warning(
                "describe_alarms_failed",
                extra={"alarm_names": names, "error": f"{type(exc).__name__}: {exc}"[:500]},
            )
            raise AlarmsUnavailable(f"DescribeAlarms failed: {type(exc).__name__}") from exc
