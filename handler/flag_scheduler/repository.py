"""The scheduler's reads and writes in PostgreSQL (psycopg 3), returning models."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from flag_scheduler import db, sql
from flag_scheduler.errors import (
    DatabaseUnavailable,
    FlagSchedulerError,
    PermanentDatabaseError,
    TransientDatabaseError,
)
from flag_scheduler.models import (
    MAX_UPDATES_BYTES,
    AppliedSchedule,
    DueSchedule,
    FlagState,
    LockHolder,
    ScheduleOutcome,
)

# SQLSTATEs a later attempt can get past, by the name we record them under.
_TRANSIENT_SQLSTATES = {
    "40001": "serialization_failure",
    "40P01": "deadlock",
    "55P03": "lock_timeout",
    "57014": "statement_timeout",
}
# SQLSTATE classes that mean the data itself is wrong: 22 data exception, 23 integrity.
_PERMANENT_SQLSTATE_CLASSES = {"22": "data_error", "23": "integrity_error"}


def translate_error(exc: psycopg.Error, conn: psycopg.Connection[Any]) -> FlagSchedulerError:
    """Map a psycopg error to our own exception class."""
    sqlstate = exc.sqlstate or ""
    message = (exc.diag.message_primary or str(exc)).strip()
    if conn.broken or conn.closed or isinstance(exc, pg_errors.AdminShutdown):
        return DatabaseUnavailable(f"database connection lost: {message}")
    if sqlstate.startswith("08"):
        return DatabaseUnavailable(f"database connection lost: {message}")
    if sqlstate in _TRANSIENT_SQLSTATES:
        return TransientDatabaseError(message, error_class=_TRANSIENT_SQLSTATES[sqlstate])
    if sqlstate[:2] in _PERMANENT_SQLSTATE_CLASSES:
        return PermanentDatabaseError(
            message, error_class=_PERMANENT_SQLSTATE_CLASSES[sqlstate[:2]]
        )
    return TransientDatabaseError(message, error_class="unknown")


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

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise translate_error(exc, self._conn) from exc

    def _execute(self, statement: str, params: Mapping[str, Any] | None = None) -> Any:
        self._statements += 1
        with self._translated():
            # Binary results: cheaper to parse for the thousands of rows a claim returns.
            return self._conn.execute(statement, params, binary=True)

    @contextmanager
    def transaction(
        self,
        *,
        lock_timeout_ms: int,
        statement_timeout_ms: int,
        idle_in_transaction_timeout_ms: int = 60_000,
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

    def claim_due(self, now: datetime, limit: int) -> list[DueSchedule]:
        """Lock and return up to `limit` schedules due at `now`, skipping locked ones."""
        rows = self._execute(
            sql.CLAIM_DUE_SCHEDULES,
            {"now": now, "limit": limit, "max_updates_bytes": MAX_UPDATES_BYTES},
        ).fetchall()
        return [DueSchedule(*row) for row in rows]

    def lock_free_flags(self, flag_ids: Sequence[UUID]) -> dict[UUID, FlagState]:
        """Lock, for the rest of the transaction, those flags no other transaction holds
        (and any this one holds already); returns their state. Never waits."""
        rows = self._execute(sql.LOCK_FREE_FLAGS, {"flag_ids": list(flag_ids)}).fetchall()
        return {row[0]: FlagState(*row) for row in rows}

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
            rows = self._execute(sql.FLAG_LOCK_HOLDERS, {"flag_id": flag_id}).fetchall()
        if not rows:
            try:
                with self._translated(), self._conn.transaction():
                    rows = self._execute(
                        sql.FLAG_LOCK_HOLDERS_MULTI, {"flag_id": flag_id}
                    ).fetchall()
            except (TransientDatabaseError, PermanentDatabaseError):
                rows = []  # xmax names no multixact either
        return [
            LockHolder(
                pid=pid,
                application_name=name or "",
                is_scheduler=name == db.APPLICATION_NAME,
            )
            for pid, name in dict(rows).items()
        ]

    def applied_since(
        self, since_by_flag: Mapping[UUID, tuple[datetime, UUID]]
    ) -> list[AppliedSchedule]:
        """Applied schedules of each flag ordered after the (scheduled_at, id) given for it."""
        rows = self._execute(
            sql.APPLIED_SINCE,
            {
                "flag_ids": list(since_by_flag),
                "since": [since for since, _ in since_by_flag.values()],
                "since_ids": [since_id for _, since_id in since_by_flag.values()],
            },
        ).fetchall()
        return [AppliedSchedule(row[0], row[1], row[2], tuple(row[3])) for row in rows]

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
    ) -> None:
        """Record each schedule's new state and its history row (two statements).

        `now` is when the attempts started (and applied_at); `finished_at` when they ended.
        """
        if not outcomes:
            return
        ids = [o.schedule.id for o in outcomes]
        error_classes = [o.error_class for o in outcomes]
        self._execute(
            sql.WRITE_OUTCOMES,
            {
                "ids": ids,
                "statuses": [o.status for o in outcomes],
                "retry_counts": [
                    o.schedule.retry_count if o.retry_count is None else o.retry_count
                    for o in outcomes
                ],
                "next_retry_at": [o.next_retry_at for o in outcomes],
                "last_errors": [o.last_error for o in outcomes],
                "error_classes": error_classes,
                "now": now,
            },
        )
        self._execute(
            sql.INSERT_ATTEMPTS,
            {
                "ids": ids,
                "attempts": [o.attempt for o in outcomes],
                "outcomes": [o.outcome for o in outcomes],
                "error_classes": error_classes,
                "errors": [o.error for o in outcomes],
                "started_at": now,
                "finished_at": finished_at,
                "request_id": request_id,
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

    def count_retry_backlog(self, *, statement_timeout_ms: int) -> int:
        """How many schedules are waiting for a retry.

        Raises:
            FlagSchedulerError: the count failed or took longer than the statement timeout.
        """
        with self.transaction(
            lock_timeout_ms=statement_timeout_ms, statement_timeout_ms=statement_timeout_ms
        ):
            row = self._execute(sql.COUNT_RETRY_BACKLOG).fetchone()
        return int(row[0])
