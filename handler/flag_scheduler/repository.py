"""The scheduler's reads and writes in PostgreSQL (psycopg 3), returning models."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from flag_scheduler import sql
from flag_scheduler.errors import (
    DatabaseUnavailable,
    FlagSchedulerError,
    PermanentDatabaseError,
    TransientDatabaseError,
)
from flag_scheduler.models import MAX_UPDATES_BYTES, AttemptRecord, DueSchedule, FlagState

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

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise translate_error(exc, self._conn) from exc

    def _execute(self, statement: str, params: Mapping[str, Any] | None = None) -> Any:
        with self._translated():
            return self._conn.execute(statement, params)

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

    def lock_flag(self, flag_id: UUID) -> FlagState | None:
        """Lock a flag's row for the rest of the transaction and return its state."""
        row = self._execute(sql.LOCK_FLAG, {"flag_id": flag_id}).fetchone()
        return FlagState(*row) if row else None

    def fields_set_later(self, schedule: DueSchedule) -> set[str]:
        """The flag fields that applied schedules scheduled after this one have set."""
        row = self._execute(
            sql.FIELDS_SET_BY_LATER_SCHEDULES,
            {
                "flag_id": schedule.flag_id,
                "scheduled_at": schedule.scheduled_at,
                "schedule_id": schedule.id,
            },
        ).fetchone()
        enabled_taken, rollout_taken = row
        return {
            name
            for name, taken in (("enabled", enabled_taken), ("rollout_percentage", rollout_taken))
            if taken
        }

    def update_flag(
        self, flag_id: UUID, fields: Mapping[str, bool | int], now: datetime
    ) -> FlagState | None:
        """Set the given fields of a flag; None if the flag no longer exists."""
        row = self._execute(
            sql.UPDATE_FLAG,
            {
                "flag_id": flag_id,
                "enabled": fields.get("enabled"),
                "rollout_percentage": fields.get("rollout_percentage"),
                "now": now,
            },
        ).fetchone()
        return FlagState(*row) if row else None

    def mark_applied(self, schedule_id: UUID, now: datetime) -> None:
        self._execute(sql.MARK_APPLIED, {"schedule_id": schedule_id, "now": now})

    def mark_superseded(self, schedule_id: UUID, now: datetime) -> None:
        self._execute(sql.MARK_SUPERSEDED, {"schedule_id": schedule_id, "now": now})

    def mark_retry_scheduled(
        self,
        schedule_id: UUID,
        *,
        retry_count: int,
        next_retry_at: datetime,
        last_error: str,
        error_class: str,
        now: datetime,
    ) -> None:
        self._execute(
            sql.MARK_RETRY_SCHEDULED,
            {
                "schedule_id": schedule_id,
                "retry_count": retry_count,
                "next_retry_at": next_retry_at,
                "last_error": last_error,
                "error_class": error_class,
                "now": now,
            },
        )

    def mark_failed_permanently(
        self, schedule_id: UUID, *, last_error: str, error_class: str, now: datetime
    ) -> None:
        self._execute(
            sql.MARK_FAILED_PERMANENTLY,
            {
                "schedule_id": schedule_id,
                "last_error": last_error,
                "error_class": error_class,
                "now": now,
            },
        )

    def record_attempt(self, attempt: AttemptRecord) -> None:
        """Append a row to the schedule's history (in the caller's transaction)."""
        self._execute(sql.INSERT_ATTEMPT, asdict(attempt))

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

    def count_retry_backlog(self) -> int:
        """How many schedules are waiting for a retry."""
        row = self._execute(sql.COUNT_RETRY_BACKLOG).fetchone()
        return int(row[0])
