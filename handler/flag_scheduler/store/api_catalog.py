"""The catalog the HTTP API (and the CLI's checked writes) use: writes that record who made
them, schedules created only after the creation-time checks, keyset pages, bulk requeues."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from flag_scheduler.engine.creation_checks import (
    Notice,
    RampInProgress,
    check_change,
    check_time,
    unscheduled_fields,
)
from flag_scheduler.engine.records import FlagUpdates
from flag_scheduler.engine.states import ErrorClass, Outcome, by_value
from flag_scheduler.engine.timeline import FlagPlan, PendingChange
from flag_scheduler.errors import (
    FlagExists,
    IdempotencyKeyReused,
    InvalidUpdates,
    ScheduleNotFound,
)
from flag_scheduler.store import sql
from flag_scheduler.store.catalog import _SCHEDULE_VIEW, Catalog, FlagView, ScheduleView
from flag_scheduler.store.rows import record_row


@dataclass(frozen=True, slots=True)
class ActionEntry:
    """A history row with the caller behind it (operator actions) or the run (attempts)."""

    attempt: int | None
    started_at: datetime
    finished_at: datetime
    outcome: Outcome
    error_class: ErrorClass | None
    error: str | None
    request_id: str | None
    actor: str | None


_ACTION_ENTRY = record_row(
    ActionEntry,
    outcome=by_value(Outcome).__getitem__,
    error_class=lambda value: None if value is None else by_value(ErrorClass)[value],
)


@dataclass(frozen=True)
class IdempotencyKey:
    """A caller's Idempotency-Key and a digest of the request it came with."""

    actor: str
    key: str
    request_hash: str


@dataclass(frozen=True)
class NewSchedule:
    """A change someone asks for, not yet checked."""

    flag: FlagView
    scheduled_at: datetime
    updates: FlagUpdates
    max_retries: int | None
    actor: str


@dataclass(frozen=True)
class CreatedSchedule:
    schedule: ScheduleView
    notices: list[Notice]
    # True when an earlier request with the same Idempotency-Key created it.
    replayed: bool = False


@dataclass(frozen=True)
class ScheduleFilter:
    """Which schedules to list or requeue; None matches all."""

    statuses: list[str] | None = None
    flag_key: str | None = None
    environment: str | None = None
    due_at: datetime | None = None


@dataclass(frozen=True)
class RequeueFilter:
    """Which permanently failed schedules a bulk requeue takes; None matches all."""

    expired: bool | None = None
    flag_key: str | None = None
    environment: str | None = None
    error_class: str | None = None
    failed_since: datetime | None = None
    failed_before: datetime | None = None


# Expired keys deleted per create: bounds the extra work a create does to a few index reads.
EXPIRED_KEYS_PER_CREATE = 100


class _LostKeyRace(Exception):
    """A concurrent request with the same Idempotency-Key committed first."""


@dataclass(frozen=True)
class WriteTimeouts:
    """Bounds on how long a write may wait for a lock (a run holding the row) or run."""

    lock_timeout_ms: int
    statement_timeout_ms: int


class ApiCatalog(Catalog):
    """Catalog writes that name their caller (`actor`) and the request (`request_id`), each
    bounded by `timeouts` when given (a lock wait past it raises LockNotAvailable).
    Idempotency keys older than `idempotency_retention_seconds` are ignored and deleted;
    None keeps them forever."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        *,
        request_id: str | None = None,
        timeouts: WriteTimeouts | None = None,
        idempotency_retention_seconds: int | None = None,
    ) -> None:
        super().__init__(conn)
        self._request_id = request_id
        self._timeouts = timeouts
        self._retention = idempotency_retention_seconds

    @contextmanager
    def _write(self) -> Iterator[None]:
        """A transaction with this catalog's timeouts (SET LOCAL: RDS Proxy does not pin)."""
        with self._conn.transaction():
            if self._timeouts is not None:
                self._conn.execute(
                    sql.SET_TRANSACTION_TIMEOUTS,
                    {
                        "lock_timeout": f"{self._timeouts.lock_timeout_ms}ms",
                        "statement_timeout": f"{self._timeouts.statement_timeout_ms}ms",
                        "idle_timeout": f"{self._timeouts.statement_timeout_ms}ms",
                    },
                )
            yield

    def cancel(self, schedule_id: UUID, *, now: datetime, actor: str) -> ScheduleView:
        with self._write():
            return super().cancel(schedule_id, now=now, actor=actor)

    def requeue(self, schedule_id: UUID, *, now: datetime, actor: str) -> ScheduleView:
        with self._write():
            return super().requeue(schedule_id, now=now, actor=actor)

    def _record_action(
        self, schedule_id: UUID, outcome: Outcome, now: datetime, actor: str
    ) -> None:
        self._conn.execute(
            sql.INSERT_ACTION,
            {
                "schedule_id": schedule_id,
                "now": now,
                "outcome": outcome,
                # The CLI has no request id: its history showed the actor there, and still does.
                "request_id": self._request_id or actor,
                "actor": actor,
            },
        )

    def create_flag_by(
        self,
        flag_key: str,
        *,
        environment: str,
        enabled: bool,
        rollout_percentage: int,
        description: str | None,
        actor: str,
    ) -> FlagView:
        """Create a flag recording its creator.

        Raises:
            FlagExists: the flag already exists in that environment.
        """
        params = {
            "flag_key": flag_key,
            "environment": environment,
            "enabled": enabled,
            "rollout_percentage": rollout_percentage,
            "description": description,
            "created_by": actor,
        }
        try:
            self._conn.execute(sql.INSERT_FLAG_BY, params)
        except pg_errors.UniqueViolation:
            raise FlagExists(
                f"flag {flag_key!r} already exists in environment {environment!r}"
            ) from None
        return self.get_flag(flag_key, environment)

    # --- planning ---

    def plan(self, flag: FlagView) -> FlagPlan:
        """The flag's current fields, what its applied schedules last set, its pending changes."""
        last_set = {
            row["field"]: (row["scheduled_at"], row["id"])
            for row in self._read(sql.LAST_SET_BY_FIELD, {"flag_id": flag.id}, dict_row)
        }
        pending = tuple(
            PendingChange(
                id=row["id"],
                scheduled_at=row["scheduled_at"],
                fields=_fields(row["updates"]),
                next_attempt_at=row["next_attempt_at"],
                lateness_from=row["lateness_from"],
            )
            for row in self._read(sql.PENDING_CHANGES_OF_FLAG, {"flag_id": flag.id}, dict_row)
        )
        current = {"enabled": flag.enabled, "rollout_percentage": flag.rollout_percentage}
        return FlagPlan(current=current, last_set=last_set, pending=pending)

    def _ramp_in_progress(self, flag: FlagView) -> RampInProgress | None:
        """The flag's unfinished ramp, if it has one."""
        rows = self._read(sql.RAMP_IN_PROGRESS_OF_FLAG, {"flag_id": flag.id}, dict_row)
        if not rows:
            return None
        row = rows[0]
        stages = [stage["updates"] for stage in row["stages"]]
        if row["end_updates"] is not None:
            stages.append(row["end_updates"])
        return RampInProgress(
            id=row["id"],
            state=row["state"],
            current_stage=row["current_stage"],
            unscheduled_fields=unscheduled_fields(row["state"], row["current_stage"], stages),
        )

    def schedule_checked(
        self,
        new: NewSchedule,
        *,
        now: datetime,
        max_lateness_seconds: int,
        idempotency: IdempotencyKey | None = None,
    ) -> CreatedSchedule:
        """Create a schedule once it passes the creation-time checks; with an idempotency
        key, a repeat of the request returns the schedule the first one created.

        Raises:
            FlagNotFound: the flag was deleted meanwhile.
            InvalidScheduleTime, TooLate: as creation_checks.check_time.
            ScheduleClash: as creation_checks.check_change.
            IdempotencyKeyReused: the key came before with a different request.
        """
        try:
            return self._schedule_once(new, now, max_lateness_seconds, idempotency)
        except _LostKeyRace:
            # The request that won has committed: its record is there to replay.
            return self._schedule_once(new, now, max_lateness_seconds, idempotency)

    def _schedule_once(
        self,
        new: NewSchedule,
        now: datetime,
        max_lateness_seconds: int,
        idempotency: IdempotencyKey | None,
    ) -> CreatedSchedule:
        with self._write():
            self._conn.execute(sql.LOCK_FLAG_FOR_PLANNING, {"flag_id": new.flag.id})
            if idempotency is not None:
                earlier = self._replay(idempotency, now)
                if earlier is not None:
                    return earlier
            notices = check_time(
                new.scheduled_at, now=now, max_lateness_seconds=max_lateness_seconds
            )
            current = self.get_flag(new.flag.flag_key, new.flag.environment)
            notices += check_change(
                self.plan(current),
                scheduled_at=new.scheduled_at,
                fields=new.updates.fields(),
                now=now,
                max_lateness_seconds=max_lateness_seconds,
                ramp=self._ramp_in_progress(current),
            )
            schedule_id = self._insert(current, new)
            if idempotency is not None:
                self._remember(idempotency, schedule_id, notices, now)
        return CreatedSchedule(self.get_schedule(schedule_id), notices)

    def _insert(self, flag: FlagView, new: NewSchedule) -> UUID:
        params = {
            "flag_id": flag.id,
            "scheduled_at": new.scheduled_at,
            "updates": Jsonb(new.updates.fields()),
            "max_retries": new.max_retries,
            "created_by": new.actor,
        }
        row = self._conn.execute(sql.INSERT_SCHEDULE_BY, params).fetchone()
        assert row is not None
        return UUID(str(row[0]))

    def _expired(self, created_at: datetime, now: datetime) -> bool:
        return self._retention is not None and created_at <= now - timedelta(
            seconds=self._retention
        )

    def _replay(self, idempotency: IdempotencyKey, now: datetime) -> CreatedSchedule | None:
        params = {"actor": idempotency.actor, "key": idempotency.key}
        row = self._read_one(sql.GET_IDEMPOTENCY_KEY, params, dict_row)
        if row is None:
            return None
        if self._expired(row["created_at"], now):
            # Past its retention the key names nothing: this request starts afresh.
            self._conn.execute(sql.DELETE_IDEMPOTENCY_KEY, params)
            return None
        if row["request_hash"] != idempotency.request_hash:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {_shown(idempotency.key)} was used for a different request"
                f" (it created schedule {row['schedule_id']}); use a new key for a new request"
            )
        try:
            schedule = self.get_schedule(row["schedule_id"])
        except ScheduleNotFound:
            # Its schedule is gone: the key names nothing, this request starts afresh.
            self._conn.execute(sql.DELETE_IDEMPOTENCY_KEY, params)
            return None
        notices = [
            Notice(
                code=notice["code"],
                detail=notice["detail"],
                schedule_id=UUID(notice["schedule_id"]) if notice.get("schedule_id") else None,
            )
            for notice in row["response"].get("notices", [])
        ]
        return CreatedSchedule(schedule, notices, replayed=True)

    def _remember(
        self,
        idempotency: IdempotencyKey,
        schedule_id: UUID,
        notices: list[Notice],
        now: datetime,
    ) -> None:
        response = {"notices": [asdict(notice) for notice in notices]}
        row = self._conn.execute(
            sql.INSERT_IDEMPOTENCY_KEY,
            {
                "actor": idempotency.actor,
                "key": idempotency.key,
                "request_hash": idempotency.request_hash,
                "schedule_id": schedule_id,
                "response": Jsonb(json.loads(json.dumps(response, default=str))),
                "now": now,
            },
        ).fetchone()
        if row is None:
            raise _LostKeyRace
        self._forget_expired_keys(now)

    def _forget_expired_keys(self, now: datetime) -> None:
        """Deletes a bounded batch of expired keys, so the table stays as large as a
        retention's worth of creates (each create deletes more than it adds)."""
        if self._retention is None:
            return
        cutoff = now - timedelta(seconds=self._retention)
        params = {"cutoff": cutoff, "limit": EXPIRED_KEYS_PER_CREATE}
        self._conn.execute(sql.DELETE_EXPIRED_IDEMPOTENCY_KEYS, params)

    # --- reads ---

    def schedules_page(
        self, where: ScheduleFilter, *, after: tuple[datetime, UUID] | None, limit: int
    ) -> list[ScheduleView]:
        """Up to `limit` schedules after the keyset position `after`, in (scheduled_at, id)."""
        params = {
            "statuses": where.statuses,
            "flag_key": where.flag_key,
            "environment": where.environment,
            "due_at": where.due_at,
            "after_at": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit,
        }
        return self._read(sql.LIST_SCHEDULES_PAGE, params, _SCHEDULE_VIEW)

    def recent_schedules(self, flag: FlagView, limit: int = 20) -> list[ScheduleView]:
        params = {"flag_id": flag.id, "limit": limit}
        return self._read(sql.RECENT_SCHEDULES_OF_FLAG, params, _SCHEDULE_VIEW)

    def history_with_actor(self, schedule_id: UUID) -> list[ActionEntry]:
        params = {"schedule_id": schedule_id}
        return self._read(sql.SCHEDULE_HISTORY_WITH_ACTOR, params, _ACTION_ENTRY)

    # --- bulk ---

    def requeue_matching(
        self, where: RequeueFilter, *, limit: int, dry_run: bool, now: datetime, actor: str
    ) -> list[ScheduleView]:
        """Requeue (or, with dry_run, only find) up to `limit` permanently failed schedules
        matching `where`; returns them as they are after the requeue."""
        params = {**asdict(where), "limit": limit}
        if dry_run:
            return self._read(sql.PREVIEW_REQUEUEABLE, params, _SCHEDULE_VIEW)
        with self._write():
            ids = [row[0] for row in self._conn.execute(sql.SELECT_REQUEUEABLE, params)]
            if ids:
                self._conn.execute(
                    sql.REQUEUE_MANY,
                    {
                        "ids": ids,
                        "now": now,
                        "request_id": self._request_id or actor,
                        "actor": actor,
                    },
                )
        return [self.get_schedule(schedule_id) for schedule_id in ids]


def _fields(updates_text: str) -> dict[str, bool | int]:
    """The fields a stored `updates` sets; none when it is invalid (it can only fail)."""
    try:
        return FlagUpdates.from_document(json.loads(updates_text)).fields()
    except (InvalidUpdates, ValueError, RecursionError):
        return {}


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else f"{text[:37]}...")
