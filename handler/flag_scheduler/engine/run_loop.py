"""Processes due schedules in batches: apply, supersede, retry or fail each one."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import groupby
from typing import Any, Protocol
from uuid import UUID

from flag_scheduler.engine.backoff import BackoffPolicy, retry_delay
from flag_scheduler.engine.budget import statement_budget_ms
from flag_scheduler.engine.messages import outbox_messages
from flag_scheduler.engine.notifier import Notifier
from flag_scheduler.engine.records import (
    MAX_UPDATES_BYTES,
    AppliedSchedule,
    DueSchedule,
    FlagChange,
    FlagState,
    FlagUpdates,
    LockHolder,
    OutboxMessage,
    RunSummary,
    ScheduleOutcome,
)
from flag_scheduler.engine.states import ErrorClass, MessageKind, Outcome, Status
from flag_scheduler.errors import (
    DatabaseUnavailable,
    FlagMissing,
    InvalidUpdates,
    ScheduleExpired,
    ScheduleFailure,
    SystemicFailure,
)

logger = logging.getLogger(__name__)

# last_error is for people; a driver message longer than this is noise.
MAX_ERROR_LENGTH = 1000


class Clock(Protocol):
    def __call__(self) -> datetime: ...


class ScheduleRepository(Protocol):
    """What the service needs from storage (flag_scheduler.store.repository implements it)."""

    def transaction(
        self,
        *,
        lock_timeout_ms: int,
        statement_timeout_ms: int,
        idle_in_transaction_timeout_ms: int,
    ) -> AbstractContextManager[None]: ...

    def savepoint(self) -> AbstractContextManager[None]: ...

    def claim_due(
        self,
        now: datetime,
        limit: int,
        *,
        skip: Collection[UUID] = (),
        skip_flags: Collection[UUID] = (),
    ) -> list[DueSchedule]: ...

    def park_unrecordable(
        self, reasons: Mapping[UUID, str], *, now: datetime, request_id: str | None
    ) -> None: ...

    def lock_free_flags(self, flag_ids: Sequence[UUID]) -> dict[UUID, FlagState]: ...

    def wait_for_flag(self, flag_id: UUID, *, nowait: bool = False) -> bool: ...

    def flag_lock_holders(self, flag_id: UUID) -> list[LockHolder]: ...

    def applied_since(
        self, since_by_flag: Mapping[UUID, tuple[datetime, UUID]]
    ) -> list[AppliedSchedule]: ...

    def write_flags(self, flags: Sequence[FlagState], now: datetime) -> None: ...

    def write_outcomes(
        self,
        outcomes: Sequence[ScheduleOutcome],
        *,
        now: datetime,
        finished_at: datetime,
        request_id: str | None,
        messages: Sequence[OutboxMessage] = (),
    ) -> None: ...

    def save_run_state(
        self,
        *,
        started_at: datetime,
        finished_at: datetime,
        request_id: str | None,
        summary: Mapping[str, Any],
    ) -> None: ...

    @property
    def statements(self) -> int: ...


@dataclass(frozen=True)
class RunPolicy:
    """The knobs of one run, taken from Settings by the entry point."""

    max_retries: int = 3
    batch_size: int = 1000
    time_margin_ms: int = 10_000
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    lock_timeout_ms: int = 5_000
    statement_timeout_ms: int = 30_000
    max_lateness_seconds: int = 86_400  # 0: no limit
    outage_threshold: int = 5  # 0: never stop a run early
    idle_in_transaction_timeout_ms: int = 60_000


@dataclass
class _FailureStreak:
    """Consecutive retryable failures of one class: evidence of an outage, not bad data."""

    error_class: ErrorClass | None = None
    flags: set[UUID] = field(default_factory=set)
    evidence: list[str] = field(default_factory=list)

    def failed(self, flag_id: UUID, error_class: ErrorClass, last_error: str) -> None:
        if error_class != self.error_class:
            self.error_class, self.flags, self.evidence = error_class, set(), []
        self.flags.add(flag_id)
        if len(self.evidence) < 5:
            self.evidence.append(last_error)

    def succeeded(self) -> None:
        if self.error_class is not None:
            self.error_class, self.flags, self.evidence = None, set(), []

    def is_outage(self, threshold: int) -> bool:
        return threshold > 0 and len(self.flags) >= threshold


@dataclass
class _Run:
    """What one run carries from batch to batch."""

    repository: ScheduleRepository
    clock: Clock
    policy: RunPolicy
    request_id: str | None
    remaining_ms: Callable[[], int]
    # The notifications someone delivers; only these are queued in the outbox.
    kinds: frozenset[MessageKind] = frozenset()
    summary: RunSummary = field(default_factory=RunSummary)
    streak: _FailureStreak = field(default_factory=_FailureStreak)
    # Schedules this run parked, or found it could not record: re-claiming them would loop
    # until the time budget ran out.
    unrecordable: set[UUID] = field(default_factory=set)
    # Flags another run of the scheduler held past the lock timeout: their schedules are
    # left due, uncharged, for a later run, rather than waited for again batch after batch.
    sibling_held: set[UUID] = field(default_factory=set)


def process_due_schedules(
    repository: ScheduleRepository,
    notifier: Notifier,
    *,
    clock: Clock,
    remaining_ms: Callable[[], int],
    policy: RunPolicy,
    request_id: str | None = None,
    progress: Callable[[RunSummary], None] | None = None,
) -> RunSummary:
    """Process due schedules in batches until none is due or time runs short.

    Each batch is one transaction holding the claim's row locks. Its schedules are decided
    together: the flags no other transaction holds locked in one statement that never
    waits, each flag's resulting fields computed in memory in scheduled order, then all
    flag writes, outcomes, history rows and outbox messages written in four statements.
    Schedules whose flag is held elsewhere are handed back, still due and uncharged, for a
    later batch; a batch whose every flag is held waits for one, holding none (see
    _wait_for_first_flag).
    Only when one of the write statements fails does the batch fall back to one savepoint
    per schedule, so one bad schedule never undoes its neighbours.
    Each outcome's notifications (of the kinds `notifier` delivers) are queued in the
    outbox in the same transaction; flag_scheduler.engine.delivery sends them after commit.
    `progress` is told the running totals after each batch.

    Raises:
        DatabaseUnavailable: the connection was lost; the open batch was rolled back by the
            server and its schedules stay due, so nothing is lost or charged a retry.
        SystemicFailure: `policy.outage_threshold` different flags failed in a row with the
            same retryable error; what was tried is committed, the rest stays due uncharged.
    """
    run = _Run(
        repository=repository,
        clock=clock,
        policy=policy,
        request_id=request_id,
        remaining_ms=remaining_ms,
        kinds=notifier.kinds,
    )
    summary = run.summary
    started_at = clock()
    statements_before = repository.statements
    while True:
        left_ms = remaining_ms()
        if left_ms < policy.time_margin_ms:
            summary.stopped_for_time = True
            break
        now = clock()
        with repository.transaction(
            lock_timeout_ms=policy.lock_timeout_ms,
            statement_timeout_ms=statement_budget_ms(
                policy.statement_timeout_ms, window_ms=left_ms - policy.time_margin_ms
            ),
            idle_in_transaction_timeout_ms=policy.idle_in_transaction_timeout_ms,
        ):
            # Neither rows found unrecordable nor flags a sibling run holds may crowd out
            # the rest of the queue.
            claimed = repository.claim_due(
                now, policy.batch_size, skip=run.unrecordable, skip_flags=run.sibling_held
            )
            if not claimed:
                break
            batch = _park_defective(run, claimed, now)
            summary.batches += 1
            summary.claimed += len(claimed)
            outcomes = _process_batch(run, batch, now) if batch else []
        summary.transactions += 1
        _report(run, outcomes, now)
        if progress is not None:
            progress(summary)
        if run.streak.is_outage(policy.outage_threshold):
            streak = run.streak
            raise SystemicFailure(
                f"{len(streak.flags)} different flags failed in a row with"
                f" {streak.error_class}; stopped the run to spare the rest their retries",
                error_class=streak.error_class or ErrorClass.UNKNOWN,
                flags=len(streak.flags),
                evidence=streak.evidence,
            )
        if summary.stopped_for_time:
            break
    summary.transactions += 1  # the claim that found nothing, or save_run_state's
    repository.save_run_state(
        started_at=started_at,
        finished_at=clock(),
        request_id=request_id,
        summary=summary.as_dict(),
    )
    summary.statements = repository.statements - statements_before
    return summary


def _process_batch(run: _Run, batch: list[DueSchedule], now: datetime) -> list[ScheduleOutcome]:
    """Decide and write a claimed batch; returns outcomes in processing order.

    A run never waits for a flag while it holds another: it locks the flags no one else
    holds, without waiting, and hands the rest back (left untouched, their claim ends at
    commit: still due, not charged, and first in a later claim). So a sibling run is only
    ever kept waiting for the few statements of a batch, never for a lock timeout.
    """
    # Within a flag, oldest-scheduled first. (UUID.int orders like PostgreSQL's uuid, and
    # compares far faster than UUID objects.)
    # (The claim already left out flags a sibling held past the lock timeout.)
    ordered = sorted(batch, key=lambda s: (s.flag_id.int, s.scheduled_at, s.id.int))
    outcomes: list[ScheduleOutcome] = []
    flags = run.repository.lock_free_flags(_flag_ids(ordered)) if ordered else {}
    if ordered and not flags:
        outcomes, ordered = _wait_for_first_flag(run, ordered, now)
        flags = run.repository.lock_free_flags(_flag_ids(ordered)) if ordered else {}
    ready = [schedule for schedule in ordered if schedule.flag_id in flags]
    # What is handed back is counted by the run that decides it (this one, in a later
    # batch, or a sibling), so concurrent runs' claimed counts add up.
    run.summary.claimed -= len(batch) - len(ready) - len(outcomes)
    return outcomes + _apply_locked(run, ready, flags, now)


def _flag_ids(schedules: Sequence[DueSchedule]) -> list[UUID]:
    """The distinct flags of schedules sorted by flag."""
    return [flag_id for flag_id, _ in groupby(schedules, key=lambda s: s.flag_id)]


class Blocker(StrEnum):
    """Who kept a run waiting for a flag past the lock timeout."""

    #: Another run of the scheduler: waiting on it is never charged to a schedule.
    SIBLING = "sibling"
    #: An application's transaction: the schedule is charged a retryable lock_timeout.
    APPLICATION = "application"
    #: Nobody the server shows: the holder has just finished, or hides its transaction.
    UNKNOWN = "unknown"


def blocked_by(holders: Sequence[LockHolder]) -> Blocker:
    """Classify the sessions holding a flag's lock (only one run can hold it at a time)."""
    if any(holder.is_scheduler for holder in holders):
        return Blocker.SIBLING
    return Blocker.APPLICATION if holders else Blocker.UNKNOWN


def _wait_for_first_flag(
    run: _Run, ordered: list[DueSchedule], now: datetime
) -> tuple[list[ScheduleOutcome], list[DueSchedule]]:
    """Wait for the first flag of a batch whose every flag another transaction holds.

    The batch holds no flag lock while it waits, so no run waits on it in turn; and each
    such batch settles the first flag's schedules (or learns the flag is free now), so
    runs always move on. Returns the outcomes recorded and the schedules still to try.
    """
    policy = run.policy
    flag_id = ordered[0].flag_id
    waiting = [schedule for schedule in ordered if schedule.flag_id == flag_id]
    rest = ordered[len(waiting) :]
    if run.remaining_ms() - policy.time_margin_ms < policy.lock_timeout_ms:
        # A wait the time budget would cut short proves nothing about the holder.
        run.summary.stopped_for_time = True
        return [], []
    verdict = _wait_for_flag(run, flag_id)
    if verdict is None:
        return [], ordered
    if isinstance(verdict, LockHolder):
        run.sibling_held.add(flag_id)
        logger.warning(
            "flag_held_by_sibling_run",
            extra={
                "flag_id": str(flag_id),
                "holder_pid": verdict.pid,
                "schedules_left_due": len(waiting),
                "lock_timeout_ms": policy.lock_timeout_ms,
            },
        )
        return [], rest
    outcomes: list[ScheduleOutcome] = []
    for schedule in waiting:
        outcomes += _record_failure(run, schedule, verdict, now)
    return outcomes, rest


def _wait_for_flag(run: _Run, flag_id: UUID) -> ScheduleFailure | LockHolder | None:
    """Wait up to the lock timeout for a flag, holding nothing after.

    Returns None when the flag is free now, the sibling run that held it past the lock
    timeout, or the failure to charge: the timeout when anyone else held it (the
    scheduler's own locks always show, see sql.LOCK_FREE_FLAGS), flag_missing when the
    flag is gone.

    Raises:
        DatabaseUnavailable: the connection was lost.
    """
    repository = run.repository
    try:
        found = repository.wait_for_flag(flag_id)
    except DatabaseUnavailable:
        raise
    except ScheduleFailure as failure:
        if failure.error_class not in (ErrorClass.LOCK_TIMEOUT, ErrorClass.STATEMENT_TIMEOUT):
            return failure
        holders = _lock_holders(run, flag_id)
        if blocked_by(holders) is Blocker.UNKNOWN:
            # The holder may have finished since: look once more, without waiting.
            try:
                found = repository.wait_for_flag(flag_id, nowait=True)
            except DatabaseUnavailable:
                raise
            except ScheduleFailure:
                holders = _lock_holders(run, flag_id)
            else:
                return None if found else FlagMissing(f"flag {flag_id} does not exist")
        if blocked_by(holders) is Blocker.SIBLING:
            return next(holder for holder in holders if holder.is_scheduler)
        return failure
    return None if found else FlagMissing(f"flag {flag_id} does not exist")


def _lock_holders(run: _Run, flag_id: UUID) -> list[LockHolder]:
    """Who holds the flag's lock; none known when even asking fails."""
    try:
        return run.repository.flag_lock_holders(flag_id)
    except DatabaseUnavailable:
        raise
    except ScheduleFailure:
        return []


def _apply_locked(
    run: _Run, ready: list[DueSchedule], flags: Mapping[UUID, FlagState], now: datetime
) -> list[ScheduleOutcome]:
    """Apply schedules whose flags this transaction holds, in one group if it can."""
    if not ready:
        return []
    try:
        with run.repository.savepoint():
            return _apply_group(run, ready, now, flags)
    except DatabaseUnavailable:
        raise
    except ScheduleFailure:
        pass  # one of them made a bulk statement fail: isolate it below
    outcomes: list[ScheduleOutcome] = []
    for schedule in ready:
        if run.remaining_ms() < run.policy.time_margin_ms:
            # Unprocessed claims are untouched and unlock at commit: still due.
            run.summary.stopped_for_time = True
            break
        try:
            with run.repository.savepoint():
                outcomes += _apply_group(run, [schedule], now)
        except DatabaseUnavailable:
            raise
        except ScheduleFailure as failure:
            outcomes += _record_failure(run, schedule, failure, now)
        if run.streak.is_outage(run.policy.outage_threshold):
            break  # the untried rest of the batch unlocks at commit, uncharged
    return outcomes


def _park_defective(run: _Run, claimed: list[DueSchedule], now: datetime) -> list[DueSchedule]:
    """Park the claimed rows the engine cannot represent; returns the others."""
    defective = [schedule for schedule in claimed if schedule.defect is not None]
    if not defective:
        return claimed
    _park(run, {s.id: s.defect or "" for s in defective}, defective, now)
    return [schedule for schedule in claimed if schedule.defect is None]


def _park(run: _Run, reasons: dict[UUID, str], schedules: list[DueSchedule], now: datetime) -> None:
    """Take unrecordable schedules out of the queue as permanently failed, and count them.

    Whatever happens they are skipped for the rest of the run, so they can never crowd out
    the rest; if even parking fails they stay untouched (still due, uncharged) and the
    next run tries again.
    """
    run.unrecordable.update(reasons)
    run.summary.unrecordable += len(schedules)
    parked = True
    try:
        with run.repository.savepoint():
            run.repository.park_unrecordable(reasons, now=now, request_id=run.request_id)
    except DatabaseUnavailable:
        raise
    except ScheduleFailure as failure:
        parked = False
        logger.error(
            "schedules_park_failed",
            extra={"error_class": failure.error_class, "error": str(failure)[:MAX_ERROR_LENGTH]},
        )
    for schedule in schedules:
        logger.error(
            "schedule_unrecordable",
            extra={
                **_log_fields(schedule),
                "error_class": ErrorClass.UNRECORDABLE,
                "error": reasons[schedule.id][:MAX_ERROR_LENGTH],
                "parked": parked,
            },
        )


def _record_failure(
    run: _Run, schedule: DueSchedule, failure: ScheduleFailure, now: datetime
) -> list[ScheduleOutcome]:
    """Write one schedule's failed attempt and its messages in its own savepoint; when
    that cannot be written, park the schedule and return []."""
    outcome = _failure_outcome(run, schedule, failure, now)
    try:
        with run.repository.savepoint():
            run.repository.write_outcomes(
                [outcome],
                now=now,
                finished_at=run.clock(),
                request_id=run.request_id,
                messages=outbox_messages([outcome], run.kinds),
            )
    except DatabaseUnavailable:
        raise
    except ScheduleFailure as unrecordable:
        reason = f"its outcome could not be written: {unrecordable.error_class}: "
        _park(run, {schedule.id: reason + str(unrecordable)}, [schedule], now)
        return []
    return [outcome]


def _apply_group(
    run: _Run,
    schedules: list[DueSchedule],
    now: datetime,
    flags: Mapping[UUID, FlagState] | None = None,
) -> list[ScheduleOutcome]:
    """Apply schedules sorted by (flag, scheduled_at, id), inside the caller's savepoint.

    Their flags are locked by this transaction already; `flags` is their state, read
    again when not given (after earlier savepoints of the batch wrote some of them).

    Raises:
        ScheduleFailure: a statement failed; the caller's savepoint undoes everything.
    """
    repository = run.repository
    # The flags were locked before this reads which fields later schedules set: a run that
    # applied a later schedule to one of them had committed when the lock was granted, and
    # the next statement's snapshot sees it.
    if flags is None:
        flags = repository.lock_free_flags(_flag_ids(schedules))
    # The first (oldest) schedule of each flag: only applied ones ordered after it matter.
    since = {s.flag_id: (s.scheduled_at, s.id) for s in reversed(schedules)}
    marks: dict[UUID, dict[str, tuple[datetime, UUID]]] = {}
    for applied in repository.applied_since(since):
        flag_marks = marks.setdefault(applied.flag_id, {})
        order = (applied.scheduled_at, applied.id)
        for name in applied.fields:
            if name not in flag_marks or flag_marks[name] < order:
                flag_marks[name] = order

    outcomes: list[ScheduleOutcome] = []
    changed: dict[UUID, FlagState] = {}
    for schedule in schedules:
        state = changed.get(schedule.flag_id) or flags.get(schedule.flag_id)
        flag_marks = marks.setdefault(schedule.flag_id, {})
        order = (schedule.scheduled_at, schedule.id)
        attempt = schedule.retry_count + 1
        try:
            updates = _validate(schedule)
            if state is None:
                raise FlagMissing(f"flag {schedule.flag_id} does not exist")
            fields = {
                name: value
                for name, value in updates.fields().items()
                if name not in flag_marks or flag_marks[name] < order
            }
            if not fields:
                # Nothing left to set, however late: superseded, not an expiry alert.
                outcomes.append(
                    ScheduleOutcome(
                        schedule,
                        status=Status.SUPERSEDED,
                        outcome=Outcome.SUPERSEDED,
                        attempt=attempt,
                    )
                )
                continue
            _refuse_if_expired(schedule, now, run.policy)
        except ScheduleFailure as failure:
            outcomes.append(_failure_outcome(run, schedule, failure, now))
            continue
        before = state.fields()
        state = state.with_fields(fields)
        changed[schedule.flag_id] = state
        for name in fields:
            flag_marks[name] = order
        change = FlagChange(
            schedule_id=schedule.id,
            flag_key=schedule.flag_key,
            environment=schedule.environment,
            old={name: before[name] for name in fields},
            new=dict(fields),
        )
        outcomes.append(
            ScheduleOutcome(
                schedule,
                status=Status.APPLIED,
                outcome=Outcome.APPLIED,
                attempt=attempt,
                change=change,
            )
        )
    if changed:
        repository.write_flags(list(changed.values()), now)
    repository.write_outcomes(
        outcomes,
        now=now,
        finished_at=run.clock(),
        request_id=run.request_id,
        messages=outbox_messages(outcomes, run.kinds),
    )
    # A flag that took its change breaks a streak of failures: not an outage. (A group holds
    # no retryable failure: those abort the group, and the fallback retries one by one.)
    if any(o.outcome in (Outcome.APPLIED, Outcome.SUPERSEDED) for o in outcomes):
        run.streak.succeeded()
    return outcomes


def _validate(schedule: DueSchedule) -> FlagUpdates:
    """The schedule's updates, unless the document is too large, undecodable or invalid.

    Raises:
        InvalidUpdates: saying what is wrong with the document.
    """
    if schedule.updates_bytes > MAX_UPDATES_BYTES or schedule.updates is None:
        raise InvalidUpdates(
            f"updates is {schedule.updates_bytes} bytes; the limit is {MAX_UPDATES_BYTES}"
        )
    try:
        document = json.loads(schedule.updates)
    except (ValueError, RecursionError) as exc:
        # Valid JSONB can still defeat a decoder (nested thousands deep): that is this
        # schedule's problem, never a reason to fail the whole batch.
        raise InvalidUpdates(f"updates cannot be decoded: {type(exc).__name__}") from None
    return FlagUpdates.from_document(document)


def _refuse_if_expired(schedule: DueSchedule, now: datetime, policy: RunPolicy) -> None:
    """Raise ScheduleExpired when the change is later than the lateness limit allows."""
    if not policy.max_lateness_seconds:
        return
    # A schedule requeued by hand gets a fresh window from the moment it was requeued.
    due_since = schedule.requeued_at or schedule.scheduled_at
    if now - due_since > timedelta(seconds=policy.max_lateness_seconds):
        raise ScheduleExpired(
            f"not applied within {policy.max_lateness_seconds} s of {due_since.isoformat()}"
        )


def _failure_outcome(
    run: _Run, schedule: DueSchedule, failure: ScheduleFailure, now: datetime
) -> ScheduleOutcome:
    """What a failed attempt leaves: a scheduled retry, or a permanent failure."""
    policy = run.policy
    message = str(failure)[:MAX_ERROR_LENGTH]
    last_error = f"{failure.error_class}: {message}"
    limit = schedule.max_retries if schedule.max_retries is not None else policy.max_retries
    attempt = schedule.retry_count + 1
    if failure.retryable:
        run.streak.failed(schedule.flag_id, failure.error_class, last_error)
    if failure.retryable and schedule.retry_count < limit:
        # From the moment of failure, not the batch's start: a fallback slowed by lock
        # timeouts must not commit retries that are already due.
        failed_at = max(run.clock(), now)
        return ScheduleOutcome(
            schedule,
            status=Status.FAILED,
            outcome=Outcome.RETRY_SCHEDULED,
            attempt=attempt,
            retry_count=schedule.retry_count + 1,
            next_retry_at=failed_at
            + retry_delay(policy.backoff, schedule.retry_count, schedule.id),
            error_class=failure.error_class,
            error=message,
            max_retries=limit,
        )
    final = Outcome.EXPIRED if isinstance(failure, ScheduleExpired) else Outcome.FAILED_PERMANENTLY
    return ScheduleOutcome(
        schedule,
        status=Status.FAILED,
        outcome=final,
        attempt=attempt,
        error_class=failure.error_class,
        error=message,
        max_retries=limit,
    )


def _report(run: _Run, outcomes: list[ScheduleOutcome], now: datetime) -> None:
    """Count and log the outcomes of a committed batch (their notifications are queued)."""
    summary = run.summary
    for outcome in outcomes:
        schedule = outcome.schedule
        if outcome.outcome == Outcome.APPLIED:
            assert outcome.change is not None
            summary.applied += 1
            lag = now - schedule.scheduled_at
            summary.record_lag(lag.total_seconds())
            retried = schedule.retry_count > 0
            summary.retry_succeeded += retried
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "schedule_retry_succeeded" if retried else "schedule_applied",
                    extra={
                        **_log_fields(schedule),
                        "lag_seconds": round(lag.total_seconds(), 3),
                        "old": outcome.change.old,
                        "new": outcome.change.new,
                    },
                )
        elif outcome.outcome == Outcome.SUPERSEDED:
            summary.superseded += 1
            logger.info("schedule_superseded", extra=_log_fields(schedule))
        elif outcome.outcome == Outcome.RETRY_SCHEDULED:
            summary.retried += 1
            assert outcome.next_retry_at is not None
            logger.warning(
                "schedule_retry_scheduled",
                extra={
                    **_log_fields(schedule),
                    **_error_fields(outcome),
                    "retry_count": outcome.retry_count,
                    "next_retry_at": outcome.next_retry_at.isoformat(),
                },
            )
        else:
            summary.failed_permanently += 1
            summary.expired += outcome.outcome == Outcome.EXPIRED
            logger.error(
                "schedule_failed_permanently",
                extra={**_log_fields(schedule), **_error_fields(outcome), "next_retry_at": None},
            )


def _error_fields(outcome: ScheduleOutcome) -> dict[str, object]:
    return {
        "max_retries": outcome.max_retries,
        "error_class": outcome.error_class,
        "error": outcome.last_error,
    }


def _log_fields(schedule: DueSchedule) -> dict[str, object]:
    return {
        "schedule_id": str(schedule.id),
        "flag_key": schedule.flag_key,
        "environment": schedule.environment,
        "retry_count": schedule.retry_count,
        "scheduled_at": schedule.scheduled_at.isoformat(),
    }
