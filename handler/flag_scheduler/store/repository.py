"""The scheduler's reads and writes in PostgreSQL (psycopg 3), returning models."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from psycopg.rows import BaseRowFactory, dict_row
from psycopg.types.json import Jsonb

from flag_scheduler.engine.delivery import Backlogs
from flag_scheduler.engine.limits import (
    EARLIEST_TIME,
    END_OF_TIME,
    MAX_ERROR_LENGTH,
    MAX_RETRY_COUNT,
)
from flag_scheduler.engine.messages import PendingAlert
from flag_scheduler.engine.ramps import NewSchedule, RampStep
from flag_scheduler.engine.records import (
    MAX_UPDATES_BYTES,
    AppliedSchedule,
    ClaimedMessage,
    DueSchedule,
    FlagState,
    LockHolder,
    OutboxMessage,
    Ramp,
    RampStage,
    ScheduleOutcome,
)
from flag_scheduler.engine.states import (
    ErrorClass,
    InsufficientData,
    MessageKind,
    RampState,
    by_value,
)
from flag_scheduler.errors import (
    PermanentDatabaseError,
    TransientDatabaseError,
)
from flag_scheduler.store import connection, sql
from flag_scheduler.store.rows import record_row

T = TypeVar("T")


# Each statement's columns are named as its record's fields (see sql.py).
_DUE_SCHEDULE = record_row(DueSchedule)
_FLAG_STATE = record_row(FlagState)
_APPLIED_SCHEDULE = record_row(AppliedSchedule, fields=tuple)
_PENDING_ALERT = record_row(PendingAlert)
_BACKLOGS = record_row(Backlogs)
_CLAIMED_MESSAGE = record_row(ClaimedMessage, kind=by_value(MessageKind).__getitem__)


class ScheduleRepository:
    """Schedules and flags, on one connection opened with autocommit=True.

    Autocommit matters: only then does `transaction()` open a real transaction, which
    the claim's row locks need to outlive the claim statement.
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._statements = 0

    @property
    def statements(self) -> int:
        """How many statements this repository has sent (for the benchmark's figures)."""
        return self._statements

    def _translated(self) -> AbstractContextManager[None]:
        return connection.translated(self._conn)

    def _execute(self, statement: str, params: Mapping[str, Any] | None = None) -> Any:
        self._statements += 1
        with self._translated():
            # Binary results: cheaper to parse for the thousands of rows a claim returns.
            return self._conn.execute(statement, params, binary=True)

    def _fetch(
        self, statement: str, params: Mapping[str, Any] | None, rows: BaseRowFactory[T]
    ) -> list[T]:
        """Run a query and return its rows as records (`rows`: a factory by column name)."""
        self._statements += 1
        with self._translated():
            cursor = self._conn.cursor(row_factory=rows)
            return cursor.execute(statement, params, binary=True).fetchall()

    @contextmanager
    def transaction(
        self,
        *,
        lock_timeout_ms: int,
        statement_timeout_ms: int,
        idle_in_transaction_timeout_ms: int,
    ) -> Iterator[None]:
        """A transaction with bounded lock, statement and idle waits; commits on success.

        Raises:
            DatabaseUnavailable: the connection is lost.
        """
        with self._translated(), self._conn.transaction():
            self._execute(
                sql.SET_TRANSACTION_TIMEOUTS,
                {
                    "lock_timeout": f"{lock_timeout_ms}ms",
                    "statement_timeout": f"{statement_timeout_ms}ms",
                    "idle_timeout": f"{idle_in_transaction_timeout_ms}ms",
                },
            )
            yield

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A savepoint: an exception inside undoes only what was done inside."""
        with self._translated(), self._conn.transaction():
            yield

    def ping(self) -> None:
        """Raises DatabaseUnavailable unless the connection answers."""
        self._execute(sql.PING).fetchall()

    def claim_due(
        self,
        now: datetime,
        limit: int,
        *,
        skip: Collection[UUID] = (),
        skip_flags: Collection[UUID] = (),
    ) -> list[DueSchedule]:
        """Lock and return up to `limit` schedules due at `now`, skipping locked ones, the
        schedules in `skip` and the schedules of the flags in `skip_flags`.

        A row holding a value the engine cannot represent comes back with `defect` set
        (and its unloadable timestamps replaced), so one bad row never fails the claim.
        """
        return self._fetch(
            sql.CLAIM_DUE_SCHEDULES,
            {
                "now": now,
                "limit": limit,
                "skip": list(skip),
                "skip_flags": list(skip_flags),
                "max_updates_bytes": MAX_UPDATES_BYTES,
                "max_retry_count": MAX_RETRY_COUNT,
                "earliest": EARLIEST_TIME,
                "latest": END_OF_TIME,
            },
            _DUE_SCHEDULE,
        )

    def park_unrecordable(
        self, reasons: Mapping[UUID, str], *, now: datetime, request_id: str | None
    ) -> None:
        """Make the given schedules permanently failed as `unrecordable`, with their reasons.

        Raises:
            ScheduleFailure: the statement failed (the caller's savepoint undoes it).
        """
        if not reasons:
            return
        self._execute(
            sql.PARK_SCHEDULES,
            {
                "ids": list(reasons),
                "reasons": [reason[:MAX_ERROR_LENGTH] for reason in reasons.values()],
                "now": now,
                "request_id": request_id,
                "max_retry_count": MAX_RETRY_COUNT,
                "earliest": EARLIEST_TIME,
                "latest": END_OF_TIME,
            },
        )

    def lock_free_flags(self, flag_ids: Sequence[UUID]) -> dict[UUID, FlagState]:
        """Lock, for the rest of the transaction, those flags no other transaction holds
        (and any this one holds already); returns their state. Never waits."""
        flags = self._fetch(sql.LOCK_FREE_FLAGS, {"flag_ids": list(flag_ids)}, _FLAG_STATE)
        return {flag.id: flag for flag in flags}

    def wait_for_flag(self, flag_id: UUID, *, nowait: bool = False) -> bool:
        """Wait until no other transaction holds the flag, and hold nothing afterwards.

        Returns False when there is no such flag. Waits up to the transaction's
        lock_timeout, or not at all with `nowait`.

        Raises:
            TransientDatabaseError: `lock_timeout` when the flag is still held.
        """
        statement = sql.TRY_FLAG if nowait else sql.WAIT_FOR_FLAG
        with self._translated(), self._conn.transaction() as savepoint:
            found = self._execute(statement, {"flag_id": flag_id}).fetchone() is not None
            # Rolled back: the lock was only a way to wait, and is not kept.
            raise psycopg.Rollback(savepoint)
        return found

    def flag_lock_holders(self, flag_id: UUID) -> list[LockHolder]:
        """The sessions whose open transaction holds the flag's row lock, as far as the
        server shows them: none when the holder has just finished, or locked the row in a
        savepoint it has since released (the scheduler never does).

        Raises:
            ScheduleFailure: the server could not be asked (the transaction goes on).
        """
        with self._translated(), self._conn.transaction():
            rows = self._fetch(sql.FLAG_LOCK_HOLDERS, {"flag_id": flag_id}, dict_row)
        if not rows:
            try:
                with self._translated(), self._conn.transaction():
                    rows = self._fetch(sql.FLAG_LOCK_HOLDERS_MULTI, {"flag_id": flag_id}, dict_row)
            except (TransientDatabaseError, PermanentDatabaseError):
                rows = []  # xmax names no multixact either
        # One holder per session, however many times the server lists it.
        sessions = {row["pid"]: row["application_name"] for row in rows}
        return [
            LockHolder(
                pid=pid,
                application_name=name or "",
                is_scheduler=name == connection.APPLICATION_NAME,
            )
            for pid, name in sessions.items()
        ]

    def applied_since(
        self, since_by_flag: Mapping[UUID, tuple[datetime, UUID]]
    ) -> list[AppliedSchedule]:
        """Applied schedules of each flag ordered after the (scheduled_at, id) given for it."""
        return self._fetch(
            sql.APPLIED_SINCE,
            {
                "flag_ids": list(since_by_flag),
                "since": [since for since, _ in since_by_flag.values()],
                "since_ids": [since_id for _, since_id in since_by_flag.values()],
            },
            _APPLIED_SCHEDULE,
        )

    def write_flags(self, flags: Sequence[FlagState], now: datetime) -> None:
        """Set the fields of every given flag (whose rows this transaction has locked)."""
        self._execute(
            sql.WRITE_FLAGS,
            {
                "ids": [flag.id for flag in flags],
                "enabled": [flag.enabled for flag in flags],
                "rollout_percentage": [flag.rollout_percentage for flag in flags],
                "now": now,
            },
        )

    def write_outcomes(
        self,
        outcomes: Sequence[ScheduleOutcome],
        *,
        now: datetime,
        finished_at: datetime,
        request_id: str | None,
        messages: Sequence[OutboxMessage] = (),
    ) -> None:
        """Record each schedule's new state, its history row and the notifications it
        causes (three statements at most, in the caller's transaction).

        `now` is when the attempts started (and applied_at); `finished_at` when they ended.
        """
        if not outcomes:
            return
        self._execute(sql.WRITE_OUTCOMES, _outcome_columns(outcomes, now))
        self._execute(sql.INSERT_ATTEMPTS, _attempt_columns(outcomes, now, finished_at, request_id))
        self.enqueue_messages(messages, now=now)

    def enqueue_messages(self, messages: Sequence[OutboxMessage], *, now: datetime) -> None:
        """Queue notifications for delivery after commit (one statement; none if empty)."""
        if not messages:
            return
        self._execute(
            sql.INSERT_OUTBOX,
            {
                "message_ids": [m.message_id for m in messages],
                "kinds": [str(m.kind) for m in messages],
                "payloads": [json.dumps(m.payload, sort_keys=True) for m in messages],
                "now": now,
            },
        )

    def discard_messages(self, *, keep: Collection[MessageKind], before: datetime) -> int:
        """Delete messages queued before `before` of every kind not in `keep`; how many."""
        rows = self._execute(
            sql.DISCARD_OUTBOX, {"kinds": [str(k) for k in keep], "before": before}
        ).fetchall()
        return len(rows)

    def lock_waiting_alerts(self) -> list[PendingAlert]:
        """Lock the waiting alerts no other run is delivering, oldest first."""
        return self._fetch(sql.LOCK_WAITING_ALERTS, None, _PENDING_ALERT)

    def delete_messages(self, ids: Sequence[int]) -> None:
        """Delete outbox rows this transaction has locked (delivered or folded)."""
        if ids:
            self._execute(sql.DELETE_OUTBOX, {"ids": list(ids)})

    def claim_messages(
        self, now: datetime, *, kinds: Collection[MessageKind], limit: int
    ) -> list[ClaimedMessage]:
        """Lock and return up to `limit` messages due at `now`, skipping locked ones."""
        return self._fetch(
            sql.CLAIM_OUTBOX,
            {"now": now, "kinds": [str(k) for k in kinds], "limit": limit},
            _CLAIMED_MESSAGE,
        )

    def reschedule_messages(
        self, failures: Sequence[tuple[int, datetime, str]], *, now: datetime
    ) -> None:
        """Record failed deliveries: (row id, next attempt at, error) each."""
        if not failures:
            return
        self._execute(
            sql.RESCHEDULE_OUTBOX,
            {
                "ids": [row_id for row_id, _, _ in failures],
                "next_attempt_at": [at for _, at, _ in failures],
                "errors": [error for _, _, error in failures],
                "now": now,
            },
        )

    def count_backlogs(self) -> Backlogs:
        """How many messages wait for delivery and schedules for a retry (one statement)."""
        (backlogs,) = self._fetch(sql.COUNT_BACKLOGS, None, _BACKLOGS)
        return backlogs

    def lock_ramps(self, ramp_ids: Sequence[UUID]) -> dict[UUID, Ramp]:
        """Lock the given ramps no other transaction holds (never waits); returns them."""
        rows = self._fetch(sql.LOCK_RAMPS, {"ids": list(ramp_ids)}, dict_row)
        return {row["id"]: ramp_from_row(row) for row in rows}

    def cancel_stages(
        self, schedule_ids: Sequence[UUID], *, now: datetime, request_id: str | None
    ) -> None:
        """Cancel live stages of completed or aborted ramps, each with a history row."""
        params = {"ids": list(schedule_ids), "now": now, "request_id": request_id}
        self._execute(sql.CANCEL_ENDED_RAMP_STAGES, params)

    def write_ramp_steps(self, steps: Sequence[RampStep], *, now: datetime) -> None:
        """Write what stage outcomes did to their ramps (three statements at most), in the
        transaction that writes the outcomes."""
        if not steps:
            return
        self._execute(
            sql.ADVANCE_RAMPS,
            {
                "ids": [step.ramp.id for step in steps],
                "states": [str(step.state) for step in steps],
                "current_stages": [step.current_stage for step in steps],
                "value_before": [
                    None if step.value_before is None else json.dumps(step.value_before)
                    for step in steps
                ],
                "halt_error_classes": [
                    step.halt.error_class if step.halt else None for step in steps
                ],
                "halt_reasons": [
                    (step.halt.last_error or "")[:MAX_ERROR_LENGTH] if step.halt else None
                    for step in steps
                ],
                "now": now,
            },
        )
        self._insert_ramp_schedules([new for step in steps for new in step.schedules])
        events = [event for step in steps for event in step.events]
        self._execute(
            sql.INSERT_RAMP_EVENTS,
            {
                "ramp_ids": [e.ramp_id for e in events],
                "at": [e.at for e in events],
                "actions": [str(e.action) for e in events],
                "stages": [e.stage for e in events],
                "actors": [e.actor for e in events],
                "details": [json.dumps(e.detail, sort_keys=True) for e in events],
            },
        )

    def _insert_ramp_schedules(self, schedules: Sequence[NewSchedule]) -> None:
        if not schedules:
            return
        self._execute(
            sql.INSERT_RAMP_SCHEDULES,
            {
                "flag_ids": [s.flag_id for s in schedules],
                "scheduled_at": [s.scheduled_at for s in schedules],
                "updates": [json.dumps(s.updates, sort_keys=True) for s in schedules],
                "ramp_ids": [s.ramp_id for s in schedules],
                "ramp_stages": [s.ramp_stage for s in schedules],
            },
        )

    def stamp_next_stages(self, steps: Sequence[RampStep]) -> None:
        """Write the next stages' due times of steps re-stamped just before commit."""
        new = [n for step in steps for n in step.schedules if n.ramp_id is not None]
        if not new:
            return
        self._execute(
            sql.STAMP_NEXT_STAGES,
            {
                "ramp_ids": [n.ramp_id for n in new],
                "ramp_stages": [n.ramp_stage for n in new],
                "scheduled_at": [n.scheduled_at for n in new],
            },
        )

    def save_run_state(
        self,
        *,
        started_at: datetime,
        finished_at: datetime,
        request_id: str | None,
        summary: Mapping[str, Any],
    ) -> None:
        """Remember the last successful run."""
        self._execute(
            sql.SAVE_RUN_STATE,
            {
                "started_at": started_at,
                "finished_at": finished_at,
                "request_id": request_id,
                "summary": Jsonb(dict(summary)),
            },
        )


def ramp_from_row(row: Mapping[str, Any]) -> Ramp:
    """A flag_ramps row (all columns, by name) as a Ramp."""
    halt = row["halt_error_class"]
    return Ramp(
        id=row["id"],
        flag_id=row["flag_id"],
        state=RampState(row["state"]),
        starts_at=row["starts_at"],
        stages=tuple(
            RampStage(updates=dict(stage["updates"]), hold_seconds=int(stage["hold_seconds"]))
            for stage in row["stages"]
        ),
        current_stage=row["current_stage"],
        created_by=row["created_by"],
        end_updates=row["end_updates"],
        guard_alarms=tuple(row["guard_alarms"]),
        rollback_on_alarm=row["rollback_on_alarm"],
        insufficient_data=InsufficientData(row["insufficient_data"]),
        value_before=row["value_before"],
        halt_error_class=ErrorClass(halt) if halt is not None else None,
        halt_reason=row["halt_reason"],
        paused_remaining_seconds=row["paused_remaining_seconds"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
    )


def _outcome_columns(outcomes: Sequence[ScheduleOutcome], now: datetime) -> dict[str, Any]:
    """WRITE_OUTCOMES' parameters: one array per column, one element per schedule."""
    return {
        "ids": [o.schedule.id for o in outcomes],
        "statuses": [o.status for o in outcomes],
        "retry_counts": [
            o.schedule.retry_count if o.retry_count is None else o.retry_count for o in outcomes
        ],
        "next_retry_at": [o.next_retry_at for o in outcomes],
        "last_errors": [o.last_error for o in outcomes],
        "error_classes": [o.error_class for o in outcomes],
        "now": now,
    }


def _attempt_columns(
    outcomes: Sequence[ScheduleOutcome],
    now: datetime,
    finished_at: datetime,
    request_id: str | None,
) -> dict[str, Any]:
    """INSERT_ATTEMPTS' parameters: one history row per schedule."""
    return {
        "ids": [o.schedule.id for o in outcomes],
        "attempts": [o.attempt for o in outcomes],
        "outcomes": [o.outcome for o in outcomes],
        "error_classes": [o.error_class for o in outcomes],
        "errors": [o.error for o in outcomes],
        "started_at": now,
        "finished_at": finished_at,
        "request_id": request_id,
    }
