"""The values a schedule's status, history, failures and notifications take, defined once.

The engine, the CLI and the schema's CHECK lists (migrations/schema.py) all read them from
here, so a new value is added in one place (and a migration carries it to the CHECKs). This
module imports nothing but the standard library: Alembic loads it with the schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import TypeVar

_E = TypeVar("_E", bound=StrEnum)


class Status(StrEnum):
    """A schedule's stored status (feature_flag_schedules.status)."""

    PENDING = "pending"
    APPLIED = "applied"
    FAILED = "failed"  # waiting for a retry when next_retry_at is set, else for good
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"


class Outcome(StrEnum):
    """What one attempt, or one operator action, did: a row of a schedule's history."""

    APPLIED = "applied"
    RETRY_SCHEDULED = "retry_scheduled"
    FAILED_PERMANENTLY = "failed_permanently"
    SUPERSEDED = "superseded"
    EXPIRED = "expired"
    REQUEUED = "requeued"  # operator action
    CANCELLED = "cancelled"  # operator action


class ErrorClass(StrEnum):
    """Why an attempt failed: the stable name in last_error_class, the history, logs and
    alerts."""

    INVALID_UPDATES = "invalid_updates"
    FLAG_MISSING = "flag_missing"
    DATA_ERROR = "data_error"  # SQLSTATE class 22
    INTEGRITY_ERROR = "integrity_error"  # SQLSTATE class 23
    SERIALIZATION_FAILURE = "serialization_failure"
    DEADLOCK = "deadlock"
    LOCK_TIMEOUT = "lock_timeout"
    STATEMENT_TIMEOUT = "statement_timeout"
    CONNECTION_LOST = "connection_lost"
    EXPIRED = "expired"
    UNKNOWN = "unknown"
    UNRECORDABLE = "unrecordable"
    GUARD_ALARM = "guard_alarm"  # a ramp's guard alarm was in ALARM before its stage ran


class State(StrEnum):
    """A schedule's state as operators see it: its status, with `failed` split in three."""

    PENDING = "pending"
    WAITING_FOR_RETRY = "waiting_for_retry"
    FAILED_PERMANENTLY = "failed_permanently"
    EXPIRED = "expired"
    APPLIED = "applied"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"

    @classmethod
    def of(
        cls, status: Status, *, waiting_for_retry: bool, error_class: ErrorClass | None
    ) -> State:
        """The state of a schedule with this status, retry timer and last error class."""
        if status != Status.FAILED:
            return cls(status)
        if waiting_for_retry:
            return cls.WAITING_FOR_RETRY
        return cls.EXPIRED if error_class == ErrorClass.EXPIRED else cls.FAILED_PERMANENTLY


class MessageKind(StrEnum):
    """What an outbox message reports (notification_outbox.kind)."""

    ALERT = "alert"  # one schedule failed permanently or expired
    DIGEST = "digest"  # many alerts folded into one (a mass failure)
    FLAG_CHANGED = "flag_changed"  # an applied schedule changed a flag


class RampState(StrEnum):
    """A ramp's stored state (flag_ramps.state)."""

    ACTIVE = "active"  # the engine runs its stages
    PAUSED = "paused"  # an operator stopped it; the hold clock stopped with it
    HALTED = "halted"  # a stage failed for good or expired, or a guard alarm fired
    COMPLETED = "completed"
    ABORTED = "aborted"


class RampAction(StrEnum):
    """What happened to a ramp: a row of its history (flag_ramp_events.action)."""

    CREATED = "created"
    STAGE_APPLIED = "stage_applied"
    HALTED = "halted"
    COMPLETED = "completed"
    PAUSED = "paused"
    RESUMED = "resumed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"  # a change back to the value before the ramp was scheduled


class InsufficientData(StrEnum):
    """What a ramp does when a guard alarm has too little data to decide (the default waits)."""

    WAIT = "wait"  # the stage stays due and no attempt is charged
    HALT = "halt"


class AlarmState(StrEnum):
    """A CloudWatch alarm's state as DescribeAlarms reports it."""

    OK = "OK"
    ALARM = "ALARM"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"


#: Who the ramp history names when the scheduler itself acted.
SCHEDULER_ACTOR = "scheduler"
#: A ramp has 1..MAX_RAMP_STAGES stages (the schema checks the same bound).
MAX_RAMP_STAGES = 20


def by_value(enum: type[_E]) -> Mapping[str, _E]:
    """The members of `enum` by value, for decoding many rows: calling the enum costs ~40
    times a dict lookup (Python 3.11), and a claim decodes thousands of rows."""
    return MappingProxyType({member.value: member for member in enum})
