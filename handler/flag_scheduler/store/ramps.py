"""Ramps as operators create, read and steer them: each action one transaction with its
history row (the engine advances them; see migration 0010 for who writes what)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import BaseRowFactory
from psycopg.types.json import Jsonb

from flag_scheduler.engine.ramp_rules import CheckedRamp
from flag_scheduler.engine.ramps import rollback_updates
from flag_scheduler.engine.states import (
    ErrorClass,
    InsufficientData,
    RampAction,
    RampState,
    State,
    Status,
    by_value,
)
from flag_scheduler.errors import RampNotFound, StateConflict
from flag_scheduler.store import connection, sql
from flag_scheduler.store.api_catalog import WriteTimeouts
from flag_scheduler.store.catalog import FlagView
from flag_scheduler.store.rows import record_row

T = TypeVar("T")
# A run applying the live stage may insert the next one between our two locks: start over,
# a few times (each round waits for a run's commit, so this converges at once in practice).
_LOCK_ROUNDS = 5
# An operator action waits at most this long for a run holding the ramp (then: try again).
DEFAULT_TIMEOUTS = WriteTimeouts(lock_timeout_ms=5_000, statement_timeout_ms=30_000)


@dataclass(frozen=True, slots=True)
class RampView:
    """A ramp as an operator sees it; stages count from 0."""

    id: UUID
    flag_key: str
    environment: str
    state: RampState
    starts_at: datetime
    stages: list[dict[str, Any]]
    end_updates: dict[str, Any] | None
    current_stage: int
    guard_alarms: list[str]
    rollback_on_alarm: bool
    insufficient_data: InsufficientData
    value_before: dict[str, Any] | None
    halt_error_class: str | None
    halt_reason: str | None
    paused_remaining_seconds: float | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def stage_count(self) -> int:
        """Stages plus the end state, if any (it is the last stage's number + 1)."""
        return len(self.stages) + (self.end_updates is not None)

    def stage_updates(self, stage: int) -> dict[str, Any]:
        """What stage `stage` sets (the end state after the last stage)."""
        if stage < len(self.stages):
            return dict(self.stages[stage]["updates"])
        assert self.end_updates is not None
        return dict(self.end_updates)


@dataclass(frozen=True, slots=True)
class StageSchedule:
    """One schedule of one stage (a stage paused and resumed has a cancelled one too)."""

    stage: int
    schedule_id: UUID
    scheduled_at: datetime
    status: Status
    applied_at: datetime | None
    retry_count: int
    next_retry_at: datetime | None
    last_error: str | None
    last_error_class: ErrorClass | None
    updates: dict[str, Any]

    @property
    def state(self) -> State:
        return State.of(
            self.status,
            waiting_for_retry=self.next_retry_at is not None,
            error_class=self.last_error_class,
        )


@dataclass(frozen=True, slots=True)
class RampHistoryEntry:
    at: datetime
    action: RampAction
    stage: int | None
    actor: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RampDetail:
    """A ramp with every schedule of its stages and its history."""

    ramp: RampView
    schedules: list[StageSchedule]
    events: list[RampHistoryEntry]


@dataclass(frozen=True, slots=True)
class ResumedRamp:
    """A resumed ramp and its stage's live schedule: when that stage is due."""

    ramp: RampView
    stage: int
    schedule_id: UUID
    due_at: datetime


@dataclass(frozen=True, slots=True)
class LockedRamp:
    """What an operator action reads from the ramp row it locked."""

    id: UUID
    flag_id: UUID
    state: RampState
    current_stage: int
    stages: list[dict[str, Any]]
    end_updates: dict[str, Any] | None
    value_before: dict[str, Any] | None
    paused_remaining_seconds: float | None

    def stage_updates(self, stage: int) -> dict[str, Any]:
        if stage < len(self.stages):
            return dict(self.stages[stage]["updates"])
        assert self.end_updates is not None
        return dict(self.end_updates)


@dataclass(frozen=True, slots=True)
class _LiveSchedule:
    id: UUID
    ramp_stage: int
    scheduled_at: datetime
    next_retry_at: datetime | None

    @property
    def due_at(self) -> datetime:
        return self.next_retry_at or self.scheduled_at


def _optional(members: Any) -> Callable[[str | None], Any]:
    return lambda value: None if value is None else members[value]


_RAMP_VIEW = record_row(
    RampView,
    state=by_value(RampState).__getitem__,
    insufficient_data=by_value(InsufficientData).__getitem__,
)
_STAGE_SCHEDULE = record_row(
    StageSchedule,
    status=by_value(Status).__getitem__,
    last_error_class=_optional(by_value(ErrorClass)),
)
_EVENT = record_row(RampHistoryEntry, action=by_value(RampAction).__getitem__)
_LOCKED = record_row(LockedRamp, state=by_value(RampState).__getitem__)
_LIVE = record_row(_LiveSchedule)


class Ramps:
    """Ramps read and steered outside the scheduler's run.

    Runs on an autocommit connection: each method is its own transaction.
    """

    def __init__(
        self, conn: psycopg.Connection[Any], *, timeouts: WriteTimeouts = DEFAULT_TIMEOUTS
    ) -> None:
        self._conn = conn
        self._timeouts = timeouts

    def _bounded(self) -> None:
        """Bound this transaction's waits (SET LOCAL): a run holding the ramp or its stage
        makes an operator action fail as TransientDatabaseError (try again), not hang."""
        params = {
            "lock_timeout": f"{self._timeouts.lock_timeout_ms}ms",
            "statement_timeout": f"{self._timeouts.statement_timeout_ms}ms",
            "idle_timeout": f"{self._timeouts.statement_timeout_ms}ms",
        }
        self._conn.execute(sql.SET_TRANSACTION_TIMEOUTS, params)

    def _translated(self) -> AbstractContextManager[None]:
        return connection.translated(self._conn)

    def _rows(self, statement: str, params: dict[str, Any], rows: BaseRowFactory[T]) -> list[T]:
        with self._translated():
            cursor = self._conn.cursor(row_factory=rows)
            return cursor.execute(statement, params).fetchall()

    # --- reading ---

    def list_ramps(
        self,
        *,
        flag_key: str | None = None,
        environment: str | None = None,
        states: list[str] | None = None,
        after: tuple[datetime, UUID] | None = None,
        limit: int | None = None,
    ) -> list[RampView]:
        """Ramps newest first: those after `after` (the created_at and id of the last one
        shown), at most `limit` (None: all)."""
        params = {
            "flag_key": flag_key,
            "environment": environment,
            "states": states,
            "after_created_at": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit,
        }
        return self._rows(sql.LIST_RAMPS, params, _RAMP_VIEW)

    def get(self, ramp_id: UUID) -> RampView:
        """Raises NotFound when there is no such ramp."""
        found = self._rows(sql.GET_RAMP, {"ramp_id": ramp_id}, _RAMP_VIEW)
        if not found:
            raise RampNotFound(f"no ramp with id {ramp_id}")
        return found[0]

    def show(self, ramp_id: UUID) -> RampDetail:
        """A ramp, its stages' schedules and its history, read in one snapshot.

        Raises:
            NotFound: no such ramp.
        """
        with self._translated(), self._conn.transaction():
            self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            ramp = self.get(ramp_id)
            params = {"ramp_id": ramp_id}
            schedules = self._rows(sql.RAMP_SCHEDULES, params, _STAGE_SCHEDULE)
            events = self._rows(sql.RAMP_EVENTS, params, _EVENT)
        return RampDetail(ramp, schedules, events)

    # --- creating ---

    def create(
        self,
        flag: FlagView,
        ramp: CheckedRamp,
        *,
        start: datetime,
        guard_alarms: list[str],
        rollback_on_alarm: bool,
        insufficient_data: InsufficientData,
        now: datetime,
        actor: str,
    ) -> RampView:
        """Store a checked ramp with stage 0's schedule (due at `start`) and its `created`
        event. The flag's value before the ramp is taken by the engine when stage 0 applies.

        Raises:
            StateConflict: the flag already has an unfinished (active, paused or halted) ramp.
        """
        stages = [{"updates": s.updates, "hold_seconds": s.hold_seconds} for s in ramp.stages]
        params = {
            "flag_id": flag.id,
            "starts_at": start,
            "stages": Jsonb(stages),
            "end_updates": None if ramp.end_updates is None else Jsonb(ramp.end_updates),
            "guard_alarms": guard_alarms,
            "rollback_on_alarm": rollback_on_alarm,
            "insufficient_data": insufficient_data.value,
            "actor": actor,
            "now": now,
        }
        with self._translated(), self._conn.transaction():
            self._bounded()
            ramp_id = self._insert_ramp(flag, params)
            self._insert_stage(ramp_id, flag.id, 0, ramp.stages[0].updates, start)
            detail = {"warnings": list(ramp.warnings)} if ramp.warnings else {}
            self._event(ramp_id, RampAction.CREATED, 0, now, actor, detail)
        return self.get(ramp_id)

    def _insert_ramp(self, flag: FlagView, params: dict[str, Any]) -> UUID:
        try:
            with self._conn.transaction():
                row = self._conn.execute(sql.INSERT_RAMP, params).fetchone()
        except pg_errors.UniqueViolation:
            other = self._conn.execute(sql.UNFINISHED_RAMP_OF_FLAG, {"flag_id": flag.id}).fetchone()
            which = f" ({other[0]}, {other[1]})" if other else ""
            raise StateConflict(
                f"flag {flag.flag_key!r} ({flag.environment}) already has an unfinished"
                f" ramp{which}; a flag ramps one ramp at a time: finish or abort it first"
            ) from None
        assert row is not None
        return UUID(str(row[0]))

    def _insert_stage(
        self, ramp_id: UUID, flag_id: UUID, stage: int, updates: dict[str, Any], at: datetime
    ) -> UUID:
        row = self._conn.execute(
            sql.INSERT_RAMP_STAGE_SCHEDULE,
            {
                "flag_id": flag_id,
                "scheduled_at": at,
                "updates": Jsonb(updates),
                "ramp_id": ramp_id,
                "ramp_stage": stage,
            },
        ).fetchone()
        assert row is not None
        return UUID(str(row[0]))

    def _event(
        self,
        ramp_id: UUID,
        action: RampAction,
        stage: int | None,
        at: datetime,
        actor: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self._conn.execute(
            sql.INSERT_RAMP_EVENT,
            {
                "ramp_id": ramp_id,
                "at": at,
                "action": action.value,
                "stage": stage,
                "actor": actor,
                "detail": Jsonb(detail or {}),
            },
        )

    # --- steering ---

    def pause(self, ramp_id: UUID, *, now: datetime, actor: str) -> RampView:
        """Stop an active ramp: its live stage schedule is cancelled (so no run applies it)
        and the time it still had to wait is kept, so the hold clock stops.

        Raises:
            NotFound: no such ramp.
            StateConflict: the ramp is not active.
        """
        with self._locked(ramp_id) as (ramp, live):
            _require(ramp, {RampState.ACTIVE}, "pause", "only an active ramp can be paused")
            remaining = 0.0
            if live is not None:
                # Milliseconds: the precision a person or a resumed schedule needs.
                remaining = round(max((live.due_at - now).total_seconds(), 0.0), 3)
                self._conn.execute(sql.CANCEL_RAMP_STAGE, {"schedule_id": live.id, "now": now})
            self._set_state(ramp_id, RampState.PAUSED, now, paused_remaining_seconds=remaining)
            detail: dict[str, Any] = {"remaining_seconds": remaining}
            if live is not None:
                detail["cancelled_schedule_id"] = str(live.id)
            self._event(ramp_id, RampAction.PAUSED, ramp.current_stage, now, actor, detail)
            paused = self.get(ramp_id)
        return paused

    def resume(self, ramp_id: UUID, *, now: datetime, actor: str) -> ResumedRamp:
        """Start a paused ramp again (its stage due after the rest of its hold), or give a
        halted ramp's failed stage a new start (requeued: due now, retries afresh).

        Returns the ramp and its stage's live schedule, read in the resume's transaction (a
        run may apply that stage as soon as it commits).

        Raises:
            NotFound: no such ramp.
            StateConflict: the ramp is neither paused nor halted.
        """
        with self._locked(ramp_id) as (ramp, live):
            allowed = {RampState.PAUSED, RampState.HALTED}
            _require(ramp, allowed, "resume", "only a paused or halted ramp can be resumed")
            stage = ramp.current_stage
            if live is not None:
                schedule_id, due = live.id, live.due_at  # a halt that left its stage live
            elif ramp.state == RampState.PAUSED:
                due = now + timedelta(seconds=ramp.paused_remaining_seconds or 0.0)
                schedule_id = self._new_stage(ramp, stage, due)
            else:
                schedule_id, due = self._requeue_stage(ramp, stage, now), now
            self._set_state(ramp_id, RampState.ACTIVE, now)
            detail = {"from": ramp.state.value, "schedule_id": str(schedule_id), "due_at": due}
            self._event(ramp_id, RampAction.RESUMED, stage, now, actor, _jsonable(detail))
            resumed = ResumedRamp(self.get(ramp_id), stage, schedule_id, due)
        return resumed

    def _new_stage(self, ramp: LockedRamp, stage: int, due: datetime) -> UUID:
        return self._insert_stage(ramp.id, ramp.flag_id, stage, ramp.stage_updates(stage), due)

    def _requeue_stage(self, ramp: LockedRamp, stage: int, now: datetime) -> UUID:
        """The halted stage's failed schedule made due now, or a new one if it has none."""
        found = self._conn.execute(
            sql.FAILED_RAMP_STAGE_SCHEDULE, {"ramp_id": ramp.id, "stage": stage}
        ).fetchone()
        if found is None:
            return self._new_stage(ramp, stage, now)
        schedule_id = UUID(str(found[0]))
        self._conn.execute(sql.REQUEUE_RAMP_STAGE, {"schedule_id": schedule_id, "now": now})
        return schedule_id

    def abort(
        self, ramp_id: UUID, *, now: datetime, actor: str, rollback: bool = False
    ) -> tuple[RampView, UUID | None]:
        """End an unfinished ramp: its live stage is cancelled and no later stage comes.
        With `rollback`, also schedule the flag back, due now, to its value before the ramp
        (none when stage 0 never applied: the ramp changed nothing).

        Returns the ramp and the rollback schedule's id (None when none was made).

        Raises:
            NotFound: no such ramp.
            StateConflict: the ramp is completed or aborted already.
        """
        with self._locked(ramp_id) as (ramp, live):
            allowed = {RampState.ACTIVE, RampState.PAUSED, RampState.HALTED}
            _require(ramp, allowed, "abort", "only an unfinished ramp can be aborted")
            if live is not None:
                self._conn.execute(sql.CANCEL_RAMP_STAGE, {"schedule_id": live.id, "now": now})
            self._set_state(ramp_id, RampState.ABORTED, now)
            self._event(ramp_id, RampAction.ABORTED, ramp.current_stage, now, actor)
            rollback_id = None
            restore = _rollback_updates(ramp)
            if rollback and restore:
                rollback_id = self._schedule_rollback(ramp, restore, now, actor)
        return self.get(ramp_id), rollback_id

    def _schedule_rollback(
        self, ramp: LockedRamp, restore: dict[str, Any], now: datetime, actor: str
    ) -> UUID:
        """A plain schedule (no stage of the ramp) back to the value before the ramp."""
        params = {
            "flag_id": ramp.flag_id,
            "scheduled_at": now,
            "updates": Jsonb(restore),
            "max_retries": None,
        }
        row = self._conn.execute(sql.INSERT_SCHEDULE, params).fetchone()
        assert row is not None
        schedule_id = UUID(str(row[0]))
        detail = {"schedule_id": str(schedule_id), "updates": restore}
        self._event(ramp.id, RampAction.ROLLED_BACK, ramp.current_stage, now, actor, detail)
        return schedule_id

    def _set_state(
        self,
        ramp_id: UUID,
        state: RampState,
        now: datetime,
        *,
        paused_remaining_seconds: float | None = None,
    ) -> None:
        params = {
            "ramp_id": ramp_id,
            "state": state.value,
            "paused_remaining_seconds": paused_remaining_seconds,
            "now": now,
        }
        self._conn.execute(sql.SET_RAMP_STATE, params)

    @contextmanager
    def _locked(self, ramp_id: UUID) -> Iterator[tuple[LockedRamp, _LiveSchedule | None]]:
        """A transaction holding the ramp's live stage schedule (if any) and then the ramp
        row, in the engine's order, with both as they are once locked.

        Raises:
            NotFound: no such ramp.
        """
        with self._translated():
            for _ in range(_LOCK_ROUNDS):
                with self._conn.transaction():
                    self._bounded()
                    locked = self._lock_both(ramp_id)
                    if locked is not None:
                        yield locked
                        return
            raise StateConflict(f"ramp {ramp_id} kept changing while being locked; try again")

    def _lock_both(self, ramp_id: UUID) -> tuple[LockedRamp, _LiveSchedule | None] | None:
        """Both locks, or None when the live schedule changed between them (start over)."""
        params = {"ramp_id": ramp_id}
        live = (
            self._conn.cursor(row_factory=_LIVE)
            .execute(sql.LOCK_LIVE_RAMP_SCHEDULE, params)
            .fetchall()
        )
        ramp = self._conn.cursor(row_factory=_LOCKED).execute(sql.LOCK_RAMP, params).fetchone()
        if ramp is None:
            raise RampNotFound(f"no ramp with id {ramp_id}")
        # The ramp lock waited for any run that touched it: what is live now is final.
        now_live = {row[0] for row in self._conn.execute(sql.LIVE_RAMP_SCHEDULES, params)}
        if now_live != {schedule.id for schedule in live}:
            return None
        return ramp, (live[0] if live else None)


def _require(ramp: LockedRamp, allowed: set[RampState], action: str, rule: str) -> None:
    if ramp.state not in allowed:
        raise StateConflict(f"ramp {ramp.id} is {ramp.state}; cannot {action}: {rule}")


def _jsonable(detail: dict[str, Any]) -> dict[str, Any]:
    """Times in an event's detail as ISO 8601 text."""
    text = json.dumps(detail, default=lambda value: value.isoformat())
    decoded: dict[str, Any] = json.loads(text)
    return decoded


def _rollback_updates(ramp: LockedRamp) -> dict[str, Any]:
    """What a rollback writes: nothing when stage 0 never applied (the ramp changed nothing)."""
    if ramp.value_before is None:
        return {}
    stages = (stage["updates"] for stage in ramp.stages)
    return rollback_updates(ramp.value_before, stages, ramp.end_updates)
