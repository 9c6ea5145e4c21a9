"""Flags, schedules and their history as a user or operator of the contract tables sees them."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, TypeVar, overload
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg import postgres, pq
from psycopg.adapt import Loader
from psycopg.rows import BaseRowFactory, dict_row
from psycopg.types.json import Jsonb

from flag_scheduler.engine.records import AttemptRecord, FlagUpdates
from flag_scheduler.engine.states import ErrorClass, Outcome, State, Status, by_value
from flag_scheduler.errors import FlagExists, FlagNotFound, ScheduleNotFound, StateConflict
from flag_scheduler.store import connection, sql
from flag_scheduler.store.rows import record_row

T = TypeVar("T")
E = TypeVar("E")


class UnloadableMoment(datetime):
    """A stored timestamptz no datetime can hold (infinity, -infinity, a year outside 1..9999).

    Written before the schema refused them (or with a check dropped), such a value must
    not break `status` or `schedules list`: it orders like the last (or first) moment a
    datetime can hold, and prints as the database's own text.
    """

    raw: str

    def __new__(cls, raw: str) -> UnloadableMoment:
        edge = datetime.min if raw.startswith("-") or raw.endswith(" BC") else datetime.max
        moment = super().__new__(cls, *edge.timetuple()[:6], edge.microsecond, tzinfo=UTC)
        moment.raw = raw
        return moment

    def astimezone(self, tz: tzinfo | None = None) -> UnloadableMoment:
        return self

    def strftime(self, format: str) -> str:
        return self.raw

    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return self.raw

    def __str__(self) -> str:
        return self.raw

    def __repr__(self) -> str:
        return f"UnloadableMoment({self.raw!r})"

    # Arithmetic saturates: infinity plus a retry delay is still infinity (the CLI computes
    # retry timelines and lateness deadlines from these).
    def __add__(self, other: timedelta) -> UnloadableMoment:
        return self

    __radd__ = __add__

    @overload  # type: ignore[override]
    def __sub__(self, other: timedelta) -> UnloadableMoment: ...

    @overload
    def __sub__(self, other: datetime) -> timedelta: ...

    def __sub__(self, other: timedelta | datetime) -> UnloadableMoment | timedelta:
        if isinstance(other, datetime):
            return timedelta.min if self.year == 1 else timedelta.max
        return self

    def __copy__(self) -> UnloadableMoment:
        return self

    def __deepcopy__(self, memo: object) -> UnloadableMoment:
        return self


_TIMESTAMPTZ = postgres.types["timestamptz"].oid


class _LenientTimestamptzLoader(Loader):
    """psycopg's own timestamptz loader, except that a value it refuses becomes an
    UnloadableMoment instead of failing the whole result."""

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        strict = psycopg.adapters.get_loader(_TIMESTAMPTZ, pq.Format.TEXT)
        assert strict is not None
        self._strict = strict(oid, context)

    def load(self, data: Any) -> datetime:
        try:
            moment: datetime = self._strict.load(data)
        except psycopg.DataError:
            return UnloadableMoment(bytes(data).decode())
        return moment


@dataclass(frozen=True, slots=True)
class FlagView:
    id: UUID
    flag_key: str
    environment: str
    enabled: bool
    rollout_percentage: int
    description: str | None
    updated_at: datetime


def _readable(updates_text: str) -> object:
    """The decoded `updates`, or its raw text when no decoder can read it (nested too deep)."""
    try:
        return json.loads(updates_text)
    except (ValueError, RecursionError):
        return updates_text


def _optional(members: Mapping[str, E]) -> Callable[[str | None], E | None]:
    """Decode a nullable text column into one of `members`."""
    return lambda value: None if value is None else members[value]


@dataclass(frozen=True, slots=True)
class ScheduleView:
    """A schedule as an operator sees it."""

    id: UUID
    flag_key: str
    environment: str
    scheduled_at: datetime
    status: Status
    updates: object
    applied_at: datetime | None
    retry_count: int
    max_retries: int | None
    next_retry_at: datetime | None
    last_error: str | None
    last_error_class: ErrorClass | None
    requeued_at: datetime | None

    @property
    def state(self) -> State:
        """The status, with `failed` split into waiting for a retry and permanently failed."""
        return State.of(
            self.status,
            waiting_for_retry=self.next_retry_at is not None,
            error_class=self.last_error_class,
        )


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    attempt: int | None
    started_at: datetime
    finished_at: datetime
    outcome: Outcome
    error_class: ErrorClass | None
    error: str | None
    request_id: str | None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """The scheduler's health at one moment."""

    now: datetime
    due_now: int
    oldest_due_at: datetime | None
    waiting_for_retry: int
    next_retry_at: datetime | None
    scheduled_later: int
    failed_last_24h: int
    # None when no run has finished yet.
    last_run_started_at: datetime | None = None
    last_run_finished_at: datetime | None = None
    last_run_request_id: str | None = None
    last_run_summary: dict[str, Any] | None = None

    @property
    def oldest_lag_seconds(self) -> float | None:
        if self.oldest_due_at is None:
            return None
        return (self.now - self.oldest_due_at).total_seconds()


# Each statement's columns are named as its record's fields (see sql.py).
_FLAG_VIEW = record_row(FlagView)
_SCHEDULE_VIEW = record_row(
    ScheduleView,
    status=by_value(Status).__getitem__,
    updates=_readable,
    last_error_class=_optional(by_value(ErrorClass)),
)
_HISTORY_ENTRY = record_row(
    HistoryEntry, outcome=by_value(Outcome).__getitem__, error_class=_optional(by_value(ErrorClass))
)


class Catalog:
    """Flags and schedules, read and written outside the scheduler's run.

    Runs on an autocommit connection: each method is its own transaction.
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def _translated(self) -> AbstractContextManager[None]:
        """Driver errors raised as ours, as the scheduler's repository raises them."""
        return connection.translated(self._conn)

    def _read(
        self, statement: str, params: dict[str, Any] | None, rows: BaseRowFactory[T]
    ) -> list[T]:
        """Run a read whose timestamps may include values no datetime can hold; `rows`
        makes each row a record by column name.

        Raises:
            FlagSchedulerError: the database failed (DatabaseUnavailable when the
                connection is lost).
        """
        with self._translated():
            cursor = self._conn.cursor(row_factory=rows)
            cursor.adapters.register_loader(_TIMESTAMPTZ, _LenientTimestamptzLoader)
            return cursor.execute(statement, params).fetchall()

    def _read_one(
        self, statement: str, params: dict[str, Any] | None, rows: BaseRowFactory[T]
    ) -> T | None:
        found = self._read(statement, params, rows)
        return found[0] if found else None

    def _returning_id(self, statement: str, params: dict[str, Any]) -> UUID:
        """Run an INSERT ... RETURNING id and return the id."""
        with self._translated():
            row = self._conn.execute(statement, params).fetchone()
        assert row is not None
        return UUID(str(row[0]))

    # --- flags ---

    def create_flag(
        self,
        flag_key: str,
        *,
        environment: str = "production",
        enabled: bool = False,
        rollout_percentage: int = 0,
        description: str | None = None,
    ) -> UUID:
        """Create a flag and return its id.

        Raises:
            StateConflict: the flag already exists in that environment.
        """
        params = {
            "flag_key": flag_key,
            "environment": environment,
            "enabled": enabled,
            "rollout_percentage": rollout_percentage,
            "description": description,
        }
        with self._translated():
            try:
                row = self._conn.execute(sql.INSERT_FLAG, params).fetchone()
            except pg_errors.UniqueViolation:
                raise FlagExists(
                    f"flag {flag_key!r} already exists in environment {environment!r}"
                ) from None
        assert row is not None
        return UUID(str(row[0]))

    def flags(self, environment: str | None = None) -> list[FlagView]:
        return self._read(sql.LIST_FLAGS, {"environment": environment}, _FLAG_VIEW)

    def get_flag(self, flag_key: str, environment: str = "production") -> FlagView:
        """Raises NotFound when the flag does not exist in that environment."""
        flag = self._read_one(
            sql.GET_FLAG, {"flag_key": flag_key, "environment": environment}, _FLAG_VIEW
        )
        if flag is None:
            raise FlagNotFound(f"no flag {flag_key!r} in environment {environment!r}")
        return flag

    # --- schedules ---

    def create_schedule(
        self,
        flag_id: UUID,
        scheduled_at: datetime,
        updates: object,
        *,
        max_retries: int | None = None,
    ) -> UUID:
        """Insert a pending schedule as any writer would (no validation here)."""
        return self._returning_id(
            sql.INSERT_SCHEDULE,
            {
                "flag_id": flag_id,
                "scheduled_at": scheduled_at,
                "updates": Jsonb(updates),
                "max_retries": max_retries,
            },
        )

    def schedule_change(
        self,
        flag: FlagView,
        scheduled_at: datetime,
        updates: FlagUpdates,
        *,
        max_retries: int | None = None,
    ) -> ScheduleView:
        """Schedule a validated change of a flag and return the new schedule."""
        schedule_id = self.create_schedule(
            flag.id, scheduled_at, updates.fields(), max_retries=max_retries
        )
        return self.get_schedule(schedule_id)

    def schedules(
        self,
        *,
        statuses: list[str] | None = None,
        flag_key: str | None = None,
        environment: str | None = None,
        due_at: datetime | None = None,
        limit: int = 1000,
    ) -> list[ScheduleView]:
        return self._read(
            sql.LIST_SCHEDULES,
            {
                "statuses": statuses,
                "flag_key": flag_key,
                "environment": environment,
                "due_at": due_at,
                "limit": limit,
            },
            _SCHEDULE_VIEW,
        )

    def get_schedule(self, schedule_id: UUID) -> ScheduleView:
        """Raises NotFound when there is no such schedule."""
        schedule = self._read_one(sql.GET_SCHEDULE, {"schedule_id": schedule_id}, _SCHEDULE_VIEW)
        if schedule is None:
            raise ScheduleNotFound(f"no schedule with id {schedule_id}")
        return schedule

    def history(self, schedule_id: UUID) -> list[HistoryEntry]:
        return self._read(sql.SCHEDULE_HISTORY, {"schedule_id": schedule_id}, _HISTORY_ENTRY)

    def requeue(self, schedule_id: UUID, *, now: datetime, actor: str) -> ScheduleView:
        """Make a permanently failed (or expired) schedule due now, with retries afresh.

        Raises:
            NotFound: no such schedule.
            StateConflict: the schedule is not permanently failed; says what it is.
        """
        return self._operator_action(
            sql.REQUEUE_SCHEDULE,
            schedule_id,
            outcome=Outcome.REQUEUED,
            allowed="only a permanently failed or expired schedule can be retried by hand",
            now=now,
            actor=actor,
        )

    def cancel(self, schedule_id: UUID, *, now: datetime, actor: str) -> ScheduleView:
        """Cancel a pending or waiting-for-retry schedule.

        If a run holds the schedule, this waits for the run to commit and then sees what
        it did, so a schedule is either cancelled before it is applied or reported applied.

        Raises:
            NotFound: no such schedule.
            StateConflict: the schedule is no longer pending or waiting; says what it is.
        """
        return self._operator_action(
            sql.CANCEL_SCHEDULE,
            schedule_id,
            outcome=Outcome.CANCELLED,
            allowed="only a pending or waiting-for-retry schedule can be cancelled",
            now=now,
            actor=actor,
        )

    def _operator_action(
        self,
        statement: str,
        schedule_id: UUID,
        *,
        outcome: Outcome,
        allowed: str,
        now: datetime,
        actor: str,
    ) -> ScheduleView:
        """Run a state change that matches only allowed states, and its history row, together.

        Raises:
            NotFound: no such schedule.
            StateConflict: the schedule's state does not allow it (`allowed` says which does).
        """
        with self._translated(), self._conn.transaction():
            row = self._conn.execute(statement, {"schedule_id": schedule_id, "now": now}).fetchone()
            if row is None:
                self._refuse_ramp_stage(schedule_id)
                current = self.get_schedule(schedule_id)
                raise StateConflict(
                    f"schedule {schedule_id} is {_describe_state(current)}; {allowed}"
                )
            self._record_action(schedule_id, outcome, now, actor)
        return self.get_schedule(schedule_id)

    def _refuse_ramp_stage(self, schedule_id: UUID) -> None:
        """A ramp's stage is driven by its ramp only: cancelling or retrying it by hand would
        leave the ramp with no live stage, or running after it ended.

        Raises:
            StateConflict: the schedule is a ramp's stage.
        """
        found = self._conn.execute(sql.SCHEDULE_RAMP_STAGE, {"schedule_id": schedule_id})
        row = found.fetchone()
        if row is not None and row[0] is not None:
            raise StateConflict(
                f"schedule {schedule_id} is stage {row[1]} of ramp {row[0]}; a ramp's stages"
                f" change only through the ramp: `flag-scheduler ramps pause|resume|abort"
                f" {row[0]}`, or POST /ramps/{row[0]}/pause|resume|abort"
            )

    def _record_action(
        self, schedule_id: UUID, outcome: Outcome, now: datetime, actor: str
    ) -> None:
        attempt = AttemptRecord(
            schedule_id=schedule_id,
            attempt=None,
            started_at=now,
            finished_at=now,
            outcome=outcome,
            request_id=actor,
        )
        self._conn.execute(sql.INSERT_ATTEMPT, asdict(attempt))

    def status(self, now: datetime) -> StatusReport:
        counts = self._read_one(sql.STATUS_COUNTS, {"now": now}, dict_row)
        assert counts is not None
        run = self._read_one(sql.GET_RUN_STATE, None, dict_row)
        return StatusReport(now=now, **counts, **(run or {}))


def _describe_state(schedule: ScheduleView) -> str:
    state = schedule.state
    if state == State.APPLIED and schedule.applied_at is not None:
        return f"already applied (at {schedule.applied_at.isoformat()})"
    if state == State.WAITING_FOR_RETRY and schedule.next_retry_at is not None:
        return f"waiting for retry {schedule.retry_count} at {schedule.next_retry_at.isoformat()}"
    if state == State.PENDING:
        return f"pending (due at {schedule.scheduled_at.isoformat()})"
    return state.replace("_", " ")
