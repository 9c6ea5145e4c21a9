"""An in-memory ScheduleStore, so the run loop is tested without PostgreSQL.

It keeps the promises the run loop relies on, as the real store does: a savepoint or
transaction that raises undoes what was written inside it; the claim skips rows and flags
another transaction holds; `statements` counts what the real store would send. What other
transactions hold, and which writes fail, is set by the test.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from flag_scheduler.engine.ramps import RampStep
from flag_scheduler.engine.records import (
    MAX_UPDATES_BYTES,
    AppliedSchedule,
    DueSchedule,
    FlagState,
    LockHolder,
    OutboxMessage,
    Ramp,
    RampEvent,
    RampStage,
    ScheduleOutcome,
)
from flag_scheduler.engine.states import ErrorClass, Outcome, RampState, Status
from flag_scheduler.errors import DatabaseUnavailable, ScheduleFailure, TransientDatabaseError

SIBLING = LockHolder(pid=101, application_name="flag-scheduler", is_scheduler=True)
APPLICATION = LockHolder(pid=202, application_name="orders-service", is_scheduler=False)


def lock_timeout() -> TransientDatabaseError:
    return TransientDatabaseError(
        "canceling statement due to lock timeout", error_class=ErrorClass.LOCK_TIMEOUT
    )


@dataclass
class Row:
    """One stored schedule."""

    id: UUID
    flag_id: UUID
    scheduled_at: datetime
    updates: str
    status: Status = Status.PENDING
    retry_count: int = 0
    max_retries: int | None = None
    next_retry_at: datetime | None = None
    requeued_at: datetime | None = None
    applied_at: datetime | None = None
    last_error: str | None = None
    defect: str | None = None
    ramp_id: UUID | None = None
    ramp_stage: int | None = None

    @property
    def due_at(self) -> datetime | None:
        if self.status == Status.PENDING:
            return self.requeued_at or self.scheduled_at
        return self.next_retry_at if self.status == Status.FAILED else None


@dataclass
class _State:
    """What a savepoint or transaction undoes."""

    flags: dict[UUID, FlagState] = field(default_factory=dict)
    schedules: dict[UUID, Row] = field(default_factory=dict)
    # (schedule, attempt, outcome, error_class) per history row, oldest first.
    history: list[tuple[UUID, int | None, Outcome, ErrorClass | None]] = field(default_factory=list)
    outbox: list[OutboxMessage] = field(default_factory=list)
    run_states: list[dict[str, Any]] = field(default_factory=list)
    ramps: dict[UUID, Ramp] = field(default_factory=dict)
    ramp_events: list[RampEvent] = field(default_factory=list)


class FakeStore:
    """flag_scheduler.engine.run_loop.ScheduleStore in memory."""

    def __init__(self) -> None:
        self.state = _State()
        self.statements = 0
        self.calls: Counter[str] = Counter()
        # The timeouts each transaction was opened with.
        self.transactions: list[dict[str, int]] = []
        # Held by other transactions: flags (by whom), and claimed schedules.
        self.held_flags: dict[UUID, list[LockHolder]] = {}
        self.held_schedules: set[UUID] = set()
        # Flags whose holder lets go while the run waits for them.
        self.released_on_wait: set[UUID] = set()
        # Writes that fail: flag writes naming a flag, outcome writes naming a schedule.
        self.failing_flags: dict[UUID, ScheduleFailure] = {}
        self.failing_outcomes: dict[UUID, ScheduleFailure] = {}
        self.failing_park: ScheduleFailure | None = None
        self.failing_stamp: ScheduleFailure | None = None
        # Ramps another transaction holds (an operator pausing one).
        self.held_ramps: set[UUID] = set()
        # The method whose next call finds the connection lost.
        self.connection_lost_in: str | None = None

    # --- test setup and inspection ---

    @property
    def flags(self) -> dict[UUID, FlagState]:
        return self.state.flags

    @property
    def schedules(self) -> dict[UUID, Row]:
        return self.state.schedules

    def add_flag(
        self,
        key: str = "banner",
        *,
        enabled: bool = False,
        rollout: int = 0,
        flag_id: UUID | None = None,
    ) -> UUID:
        flag_id = flag_id or uuid4()
        self.flags[flag_id] = FlagState(flag_id, key, "production", enabled, rollout)
        return flag_id

    def add_schedule(
        self, flag_id: UUID, at: datetime, updates: Mapping[str, Any] | str, **fields: Any
    ) -> UUID:
        text = updates if isinstance(updates, str) else json.dumps(updates)
        row = Row(
            id=fields.pop("id", None) or uuid4(), flag_id=flag_id, scheduled_at=at, updates=text
        )
        for name, value in fields.items():
            setattr(row, name, value)
        self.schedules[row.id] = row
        return row.id

    def add_ramp(
        self,
        flag_id: UUID,
        at: datetime,
        rollouts: Sequence[int],
        *,
        hold_seconds: int = 600,
        **fields: Any,
    ) -> UUID:
        """An active ramp of `rollouts` with stage 0's schedule due at `at`."""
        ramp = Ramp(
            id=uuid4(),
            flag_id=flag_id,
            state=RampState.ACTIVE,
            starts_at=at,
            stages=tuple(RampStage({"rollout_percentage": r}, hold_seconds) for r in rollouts),
            current_stage=0,
            created_by="test",
            **fields,
        )
        self.state.ramps[ramp.id] = ramp
        self.add_schedule(flag_id, at, ramp.stages[0].updates, ramp_id=ramp.id, ramp_stage=0)
        return ramp.id

    def ramp(self, ramp_id: UUID) -> Ramp:
        return self.state.ramps[ramp_id]

    def stages_of(self, ramp_id: UUID) -> list[Row]:
        """The ramp's stage schedules by stage."""
        rows = [row for row in self.schedules.values() if row.ramp_id == ramp_id]
        return sorted(rows, key=lambda row: row.ramp_stage or 0)

    def fields(self, flag_id: UUID) -> dict[str, bool | int]:
        return self.flags[flag_id].fields()

    def status(self, schedule_id: UUID) -> Status:
        return self.schedules[schedule_id].status

    def history_of(self, schedule_id: UUID) -> list[tuple[int | None, Outcome, ErrorClass | None]]:
        return [row[1:] for row in self.state.history if row[0] == schedule_id]

    # --- the ScheduleStore protocol ---

    def _statement(self, name: str) -> None:
        self.calls[name] += 1
        self.statements += 1
        if self.connection_lost_in == name:
            raise DatabaseUnavailable("database connection lost: server closed the connection")

    @contextmanager
    def _undo_on_error(self) -> Iterator[None]:
        saved = copy.deepcopy(self.state)
        try:
            yield
        except BaseException:
            self.state = saved
            raise

    @contextmanager
    def transaction(
        self,
        *,
        lock_timeout_ms: int,
        statement_timeout_ms: int,
        idle_in_transaction_timeout_ms: int,
    ) -> Iterator[None]:
        self._statement("transaction")  # SET LOCAL of the timeouts
        self.transactions.append(
            {
                "lock_timeout_ms": lock_timeout_ms,
                "statement_timeout_ms": statement_timeout_ms,
                "idle_in_transaction_timeout_ms": idle_in_transaction_timeout_ms,
            }
        )
        with self._undo_on_error():
            yield

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self.calls["savepoint"] += 1
        with self._undo_on_error():
            yield

    def claim_due(
        self,
        now: datetime,
        limit: int,
        *,
        skip: Collection[UUID] = (),
        skip_flags: Collection[UUID] = (),
    ) -> list[DueSchedule]:
        self._statement("claim_due")
        due = [
            row
            for row in self.schedules.values()
            if row.due_at is not None
            and row.due_at <= now
            and row.id not in skip
            and row.flag_id not in skip_flags
            and row.id not in self.held_schedules
        ]
        due.sort(key=lambda row: (row.due_at, row.id.int))
        return [self._due(row) for row in due[:limit]]

    def _due(self, row: Row) -> DueSchedule:
        flag = self.flags.get(row.flag_id)
        size = len(row.updates.encode())
        return DueSchedule(
            id=row.id,
            flag_id=row.flag_id,
            flag_key=flag.flag_key if flag else "gone",
            environment=flag.environment if flag else "production",
            scheduled_at=row.scheduled_at,
            updates=row.updates if size <= MAX_UPDATES_BYTES else None,
            retry_count=row.retry_count,
            max_retries=row.max_retries,
            requeued_at=row.requeued_at,
            updates_bytes=size,
            defect=row.defect,
            ramp_id=row.ramp_id,
            ramp_stage=row.ramp_stage,
        )

    def park_unrecordable(
        self, reasons: Mapping[UUID, str], *, now: datetime, request_id: str | None
    ) -> None:
        if not reasons:
            return
        self._statement("park_unrecordable")
        if self.failing_park is not None:
            raise self.failing_park
        for schedule_id, reason in reasons.items():
            row = self.schedules[schedule_id]
            row.status, row.next_retry_at = Status.FAILED, None
            row.last_error = f"unrecordable: {reason}"
            self.state.history.append(
                (schedule_id, None, Outcome.FAILED_PERMANENTLY, ErrorClass.UNRECORDABLE)
            )

    def lock_free_flags(self, flag_ids: Sequence[UUID]) -> dict[UUID, FlagState]:
        self._statement("lock_free_flags")
        return {
            flag_id: self.flags[flag_id]
            for flag_id in flag_ids
            if flag_id in self.flags and flag_id not in self.held_flags
        }

    def wait_for_flag(self, flag_id: UUID, *, nowait: bool = False) -> bool:
        self._statement("wait_for_flag")
        if flag_id in self.held_flags:
            if flag_id not in self.released_on_wait or nowait:
                raise lock_timeout()
            del self.held_flags[flag_id]
        return flag_id in self.flags

    def flag_lock_holders(self, flag_id: UUID) -> list[LockHolder]:
        self._statement("flag_lock_holders")
        return list(self.held_flags.get(flag_id, []))

    def applied_since(
        self, since_by_flag: Mapping[UUID, tuple[datetime, UUID]]
    ) -> list[AppliedSchedule]:
        self._statement("applied_since")
        found = []
        for row in self.schedules.values():
            since = since_by_flag.get(row.flag_id)
            if since is None or row.status != Status.APPLIED:
                continue
            if (row.scheduled_at, row.id) > since:
                document = json.loads(row.updates)
                names = tuple(document) if isinstance(document, dict) else ()
                found.append(AppliedSchedule(row.flag_id, row.scheduled_at, row.id, names))
        return found

    def write_flags(self, flags: Sequence[FlagState], now: datetime) -> None:
        self._statement("write_flags")
        for flag in flags:
            if flag.id in self.failing_flags:
                raise self.failing_flags[flag.id]
            self.flags[flag.id] = flag

    def write_outcomes(
        self,
        outcomes: Sequence[ScheduleOutcome],
        *,
        now: datetime,
        finished_at: datetime,
        request_id: str | None,
        messages: Sequence[OutboxMessage] = (),
    ) -> None:
        if not outcomes:
            return
        self._statement("write_outcomes")
        for outcome in outcomes:
            if outcome.schedule.id in self.failing_outcomes:
                raise self.failing_outcomes[outcome.schedule.id]
            self._record(outcome, now)
        self._statement("insert_attempts")
        self.enqueue_messages(messages, now=now)

    def _record(self, outcome: ScheduleOutcome, now: datetime) -> None:
        row = self.schedules[outcome.schedule.id]
        row.status = outcome.status
        if outcome.retry_count is not None:
            row.retry_count = outcome.retry_count
        row.next_retry_at = outcome.next_retry_at
        row.last_error = outcome.last_error
        row.applied_at = now if outcome.status == Status.APPLIED else None
        self.state.history.append((row.id, outcome.attempt, outcome.outcome, outcome.error_class))

    def lock_ramps(self, ramp_ids: Sequence[UUID]) -> dict[UUID, Ramp]:
        self._statement("lock_ramps")
        ramps = self.state.ramps
        return {i: ramps[i] for i in ramp_ids if i in ramps and i not in self.held_ramps}

    def cancel_stages(
        self, schedule_ids: Sequence[UUID], *, now: datetime, request_id: str | None
    ) -> None:
        self._statement("cancel_stages")
        for schedule_id in schedule_ids:
            row = self.schedules[schedule_id]
            row.status, row.next_retry_at = Status.CANCELLED, None

    def enqueue_messages(self, messages: Sequence[OutboxMessage], *, now: datetime) -> None:
        if messages:
            self._statement("enqueue_messages")
            self.state.outbox.extend(messages)

    def write_ramp_steps(self, steps: Sequence[RampStep], *, now: datetime) -> None:
        if not steps:
            return
        self._statement("advance_ramps")
        for step in steps:
            ramp = self.state.ramps[step.ramp.id]
            if ramp.state != RampState.ACTIVE:
                continue
            before = ramp.value_before
            if step.value_before is not None:
                flag = self.flags[ramp.flag_id]
                before = {**flag.fields(), **step.value_before}
            halt = step.halt
            self.state.ramps[ramp.id] = replace(
                ramp,
                state=step.state,
                current_stage=step.current_stage,
                value_before=before,
                halt_error_class=halt.error_class if halt else None,
                halt_reason=halt.last_error if halt else None,
            )
        new_schedules = [new for step in steps for new in step.schedules]
        if new_schedules:
            self._statement("insert_ramp_schedules")
        for new in new_schedules:
            self.add_schedule(
                new.flag_id,
                new.scheduled_at,
                new.updates,
                ramp_id=new.ramp_id,
                ramp_stage=new.ramp_stage,
            )
        self._statement("insert_ramp_events")
        self.state.ramp_events.extend(e for step in steps for e in step.events)

    def stamp_next_stages(self, steps: Sequence[RampStep]) -> None:
        self._statement("stamp_next_stages")
        if self.failing_stamp is not None:
            raise self.failing_stamp
        for new in (n for step in steps for n in step.schedules if n.ramp_id is not None):
            for row in self.schedules.values():
                if (row.ramp_id, row.ramp_stage, row.status) == (
                    new.ramp_id,
                    new.ramp_stage,
                    Status.PENDING,
                ):
                    row.scheduled_at = max(row.scheduled_at, new.scheduled_at)

    def save_run_state(
        self,
        *,
        started_at: datetime,
        finished_at: datetime,
        request_id: str | None,
        summary: Mapping[str, Any],
    ) -> None:
        self._statement("save_run_state")
        self.state.run_states.append(dict(summary))


def due_schedule(
    flag_id: UUID, at: datetime, updates: Mapping[str, Any] | str | None, **fields: Any
) -> DueSchedule:
    """A claimed schedule as the claim returns it, with defaults for what a test leaves out."""
    text = updates if isinstance(updates, str) or updates is None else json.dumps(updates)
    values: dict[str, Any] = {
        "id": uuid4(),
        "flag_key": "banner",
        "environment": "production",
        "retry_count": 0,
        "max_retries": None,
        "updates_bytes": len(text.encode()) if text is not None else MAX_UPDATES_BYTES + 1,
        **fields,
    }
    return DueSchedule(flag_id=flag_id, scheduled_at=at, updates=text, **values)
