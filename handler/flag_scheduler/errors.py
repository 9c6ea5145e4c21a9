"""Every exception flag-scheduler raises, under one base class."""

from __future__ import annotations

from flag_scheduler.engine.states import ErrorClass


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a driver's can run to dozens), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class FlagSchedulerError(Exception):
    """flag-scheduler failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(FlagSchedulerError):
    """The configuration is invalid."""


class DatabaseLoginRefused(ConfigurationError):
    """The database login was refused (wrong user or password, an authentication method or a
    server certificate this connection does not accept): retrying cannot help, fix the secret
    or the connection settings."""


class DatabaseUnavailable(FlagSchedulerError):
    """The database connection is lost or cannot be opened; the run cannot continue."""


class SystemicFailure(FlagSchedulerError):
    """Retryable failures of one kind across many flags: the run stopped early."""

    def __init__(
        self, message: str, *, error_class: ErrorClass, flags: int, evidence: list[str]
    ) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.flags = flags
        self.evidence = evidence


class ScheduleFailure(FlagSchedulerError):
    """Applying one schedule failed; the schedule records it and the run goes on."""

    #: Stable, machine-readable name of the failure (logs, metrics, last_error prefix).
    error_class: ErrorClass = ErrorClass.UNKNOWN
    #: Whether another attempt could succeed.
    retryable = True

    def __init__(
        self, message: str | None = None, *, error_class: ErrorClass | None = None
    ) -> None:
        super().__init__(message)
        if error_class is not None:
            self.error_class = error_class


class InvalidUpdates(ScheduleFailure):
    """The schedule's updates document is invalid."""

    error_class = ErrorClass.INVALID_UPDATES
    retryable = False


class FlagMissing(ScheduleFailure):
    """The schedule's flag does not exist."""

    error_class = ErrorClass.FLAG_MISSING
    retryable = False


class ScheduleExpired(ScheduleFailure):
    """The schedule could not be applied within the lateness limit."""

    error_class = ErrorClass.EXPIRED
    retryable = False


class GuardAlarmFired(ScheduleFailure):
    """A guard alarm of the schedule's ramp is in ALARM (or without data, where the ramp
    halts on that): the stage is not applied and the ramp halts."""

    error_class = ErrorClass.GUARD_ALARM
    retryable = False


class AlarmsUnavailable(FlagSchedulerError):
    """The guard alarms' states could not be read; the guarded stages wait for a later run."""


class PermanentDatabaseError(ScheduleFailure):
    """The database rejected the change as invalid data; retrying cannot help."""

    retryable = False


class TransientDatabaseError(ScheduleFailure):
    """The database failed in a way another attempt may not (lock, timeout, conflict)."""


class NotFound(FlagSchedulerError):
    """No such flag or schedule."""


class StateConflict(FlagSchedulerError):
    """The flag or schedule is not in a state that allows this."""


class FlagNotFound(NotFound):
    """No flag with this key in this environment."""


class ScheduleNotFound(NotFound):
    """No schedule with this id."""


class RampNotFound(NotFound):
    """No ramp with this id."""


class FlagExists(StateConflict):
    """A flag with this key already exists in this environment."""


class ScheduleClash(StateConflict):
    """Another pending change sets the same field of the same flag at the same instant."""


class InvalidScheduleTime(FlagSchedulerError):
    """The schedule time is not a moment a schedule can hold."""


class UnknownTimeZone(InvalidScheduleTime):
    """The time zone is not an IANA time zone name."""


class NonexistentLocalTime(InvalidScheduleTime):
    """The local time falls in a daylight-saving gap: it never happens in that zone."""


class AmbiguousLocalTime(InvalidScheduleTime):
    """The local time happens twice in that zone (a daylight-saving overlap): say which."""


class TooLate(InvalidScheduleTime):
    """The schedule time is past the lateness limit: the change could only expire."""


class IdempotencyKeyReused(FlagSchedulerError):
    """This Idempotency-Key was already used for a different request."""
