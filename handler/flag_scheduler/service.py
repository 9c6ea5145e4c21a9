"""Processes due schedules in batches: apply, supersede, retry or fail each one."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

from flag_scheduler.backoff import BackoffPolicy, retry_delay
from flag_scheduler.errors import (
    DatabaseUnavailable,
    FlagMissing,
    InvalidUpdates,
    ScheduleExpired,
    ScheduleFailure,
    SystemicFailure,
)
from flag_scheduler.models import (
    MAX_UPDATES_BYTES,
    AttemptRecord,
    DueSchedule,
    FlagChange,
    FlagState,
    FlagUpdates,
    PermanentFailure,
    RunSummary,
)
from flag_scheduler.notifier import Notifier

logger = logging.getLogger(__name__)

# last_error is for people; a driver message longer than this is noise.
MAX_ERROR_LENGTH = 1000


class Clock(Protocol):
    def __call__(self) -> datetime: ...


class ScheduleRepository(Protocol):
    """What the service needs from storage (flag_scheduler.repository implements it)."""

    def transaction(
        self,
        *,
        lock_timeout_ms: int,
        statement_timeout_ms: int,
        idle_in_transaction_timeout_ms: int,
    ) -> AbstractContextManager[None]: ...

    def savepoint(self) -> AbstractContextManager[None]: ...

    def claim_due(self, now: datetime, limit: int) -> list[DueSchedule]: ...

    def lock_flag(self, flag_id: UUID) -> FlagState | None: ...

    def fields_set_later(self, schedule: DueSchedule) -> set[str]: ...

    def update_flag(
        self, flag_id: UUID, fields: Mapping[str, bool | int], now: datetime
    ) -> FlagState | None: ...

    def mark_applied(self, schedule_id: UUID, now: datetime) -> None: ...

    def mark_superseded(self, schedule_id: UUID, now: datetime) -> None: ...

    def mark_retry_scheduled(
        self,
        schedule_id: UUID,
        *,
        retry_count: int,
        next_retry_at: datetime,
        last_error: str,
        error_class: str,
        now: datetime,
    ) -> None: ...

    def mark_failed_permanently(
        self, schedule_id: UUID, *, last_error: str, error_class: str, now: datetime
    ) -> None: ...

    def record_attempt(self, attempt: AttemptRecord) -> None: ...

    def save_run_state(
        self,
        *,
        started_at: datetime,
        finished_at: datetime,
        request_id: str | None,
        summary: Mapping[str, Any],
    ) -> None: ...


@dataclass(frozen=True)
class RunPolicy:
    """The knobs of one run, taken from Settings by the entry point."""

    max_retries: int = 3
    batch_size: int = 500
    time_margin_ms: int = 10_000
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    lock_timeout_ms: int = 5_000
    statement_timeout_ms: int = 30_000
    max_lateness_seconds: int = 86_400  # 0: no limit
    outage_threshold: int = 5  # 0: never stop a run early
    idle_in_transaction_timeout_ms: int = 60_000


@dataclass
class _Run:
    """What one run carries from schedule to schedule."""

    repository: ScheduleRepository
    clock: Clock
    policy: RunPolicy
    request_id: str | None
    summary: RunSummary = field(default_factory=RunSummary)
    streak: _FailureStreak = field(default_factory=lambda: _FailureStreak())


@dataclass
class _FailureStreak:
    """Consecutive retryable failures of one class: evidence of an outage, not bad data."""

    error_class: str | None = None
    flags: set[UUID] = field(default_factory=set)
    evidence: list[str] = field(default_factory=list)

    def failed(self, flag_id: UUID, error_class: str, last_error: str) -> None:
        if error_class != self.error_class:
            self.error_class, self.flags, self.evidence = error_class, set(), []
        self.flags.add(flag_id)
        if len(self.evidence) < 5:
            self.evidence.append(last_error)

    def succeeded(self) -> None:
        self.error_class, self.flags, self.evidence = None, set(), []

    def is_outage(self, threshold: int) -> bool:
        return threshold > 0 and len(self.flags) >= threshold


@dataclass
class _BatchOutcome:
    changes: list[FlagChange] = field(default_factory=list)
    permanent_failures: list[PermanentFailure] = field(default_factory=list)


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

    Each batch is one transaction: the claim's row locks hold until its outcomes and their
    history rows are written, and each schedule runs in its own savepoint so one failure
    never undoes its neighbours. Notifications go out only after the batch has committed.
    `progress` is told the running totals after each batch.

    Raises:
        DatabaseUnavailable: the connection was lost; the open batch was rolled back by the
            server and its schedules stay due, so nothing is lost or charged a retry.
        SystemicFailure: `policy.outage_threshold` different flags failed in a row with the
            same retryable error; what was tried is committed, the rest stays due uncharged.
    """
    run = _Run(repository=repository, clock=clock, policy=policy, request_id=request_id)
    summary = run.summary
    started_at = clock()
    while True:
        if remaining_ms() < policy.time_margin_ms:
            summary.stopped_for_time = True
            break
        now = clock()
        outcome = _BatchOutcome()
        with repository.transaction(
            lock_timeout_ms=policy.lock_timeout_ms,
            statement_timeout_ms=policy.statement_timeout_ms,
            idle_in_transaction_timeout_ms=policy.idle_in_transaction_timeout_ms,
        ):
            batch = repository.claim_due(now, policy.batch_size)
            if not batch:
                break
            summary.batches += 1
            summary.claimed += len(batch)
            # Flag rows are locked in flag_id order by every run, so two runs never wait on
            # each other in a cycle; within a flag, oldest-scheduled first.
            for schedule in sorted(batch, key=lambda s: (s.flag_id, s.scheduled_at, s.id)):
                if remaining_ms() < policy.time_margin_ms:
                    # Unprocessed claims are untouched and unlock at commit: still due.
                    summary.stopped_for_time = True
                    break
                _process_one(run, schedule, now, outcome)
                if run.streak.is_outage(policy.outage_threshold):
                    break  # the untried rest of the batch unlocks at commit, uncharged
        if outcome.permanent_failures:
            notifier.schedules_failed_permanently(outcome.permanent_failures)
        if outcome.changes:
            notifier.flags_changed(outcome.changes)
        if progress is not None:
            progress(summary)
        if run.streak.is_outage(policy.outage_threshold):
            streak = run.streak
            raise SystemicFailure(
                f"{len(streak.flags)} different flags failed in a row with"
                f" {streak.error_class}; stopped the run to spare the rest their retries",
                error_class=streak.error_class or "unknown",
                flags=len(streak.flags),
                evidence=streak.evidence,
            )
        if summary.stopped_for_time:
            break
    repository.save_run_state(
        started_at=started_at,
        finished_at=clock(),
        request_id=request_id,
        summary=summary.as_dict(),
    )
    return summary


def _process_one(run: _Run, schedule: DueSchedule, now: datetime, outcome: _BatchOutcome) -> None:
    summary = run.summary
    try:
        _refuse_if_expired(schedule, now, run.policy)
        with run.repository.savepoint():
            change = _apply(run.repository, schedule, now)
            run.repository.record_attempt(
                AttemptRecord(
                    schedule_id=schedule.id,
                    attempt=schedule.retry_count + 1,
                    started_at=now,
                    finished_at=run.clock(),
                    outcome="superseded" if change is None else "applied",
                    request_id=run.request_id,
                )
            )
    except DatabaseUnavailable:
        raise
    except ScheduleFailure as failure:
        _record_failure(run, schedule, failure, now, outcome)
        return
    run.streak.succeeded()
    if change is None:
        summary.superseded += 1
        logger.info("schedule_superseded", extra=_log_fields(schedule))
        return
    outcome.changes.append(change)
    summary.applied += 1
    lag = (now - schedule.scheduled_at).total_seconds()
    summary.lag_seconds.append(lag)
    event = "schedule_applied"
    if schedule.retry_count > 0:
        summary.retry_succeeded += 1
        event = "schedule_retry_succeeded"
    logger.info(
        event,
        extra={
            **_log_fields(schedule),
            "lag_seconds": round(lag, 3),
            "old": change.old,
            "new": change.new,
        },
    )


def _refuse_if_expired(schedule: DueSchedule, now: datetime, policy: RunPolicy) -> None:
    """Raise ScheduleExpired when the change is later than the lateness limit allows."""
    if not policy.max_lateness_seconds:
        return
    # A schedule requeued by hand gets a fresh window from the moment it was requeued.
    due_since = schedule.requeued_at or schedule.scheduled_at
    limit = timedelta(seconds=policy.max_lateness_seconds)
    if now - due_since > limit:
        raise ScheduleExpired(
            f"not applied within {policy.max_lateness_seconds} s of {due_since.isoformat()}"
        )


def _apply(
    repository: ScheduleRepository, schedule: DueSchedule, now: datetime
) -> FlagChange | None:
    """Apply one schedule inside the caller's savepoint; None when it is superseded."""
    if schedule.updates_bytes > MAX_UPDATES_BYTES:
        raise InvalidUpdates(
            f"updates is {schedule.updates_bytes} bytes; the limit is {MAX_UPDATES_BYTES}"
        )
    updates = FlagUpdates.from_document(schedule.updates)
    # Lock the flag before reading which fields later schedules set: a run that applied a
    # later schedule to this flag has committed by the time the lock is granted, and the
    # next statement's snapshot sees it.
    before = repository.lock_flag(schedule.flag_id)
    if before is None:
        raise FlagMissing(f"flag {schedule.flag_id} does not exist")
    taken = repository.fields_set_later(schedule)
    fields = {name: value for name, value in updates.fields().items() if name not in taken}
    if not fields:
        repository.mark_superseded(schedule.id, now)
        return None
    after = repository.update_flag(schedule.flag_id, fields, now)
    if after is None:
        raise FlagMissing(f"flag {schedule.flag_id} does not exist")
    repository.mark_applied(schedule.id, now)
    return FlagChange(
        schedule_id=schedule.id,
        flag_key=schedule.flag_key,
        environment=schedule.environment,
        old={name: before.fields()[name] for name in fields},
        new={name: after.fields()[name] for name in fields},
    )


def _record_failure(
    run: _Run,
    schedule: DueSchedule,
    failure: ScheduleFailure,
    now: datetime,
    outcome: _BatchOutcome,
) -> None:
    repository, policy, summary = run.repository, run.policy, run.summary
    message = str(failure)[:MAX_ERROR_LENGTH]
    last_error = f"{failure.error_class}: {message}"
    max_retries = schedule.max_retries if schedule.max_retries is not None else policy.max_retries
    fields = {
        **_log_fields(schedule),
        "max_retries": max_retries,
        "error_class": failure.error_class,
        "error": last_error,
    }
    if failure.retryable:
        run.streak.failed(schedule.flag_id, failure.error_class, last_error)
    attempt = AttemptRecord(
        schedule_id=schedule.id,
        attempt=schedule.retry_count + 1,
        started_at=now,
        finished_at=run.clock(),
        outcome="retry_scheduled",
        error_class=failure.error_class,
        error=message,
        request_id=run.request_id,
    )
    if failure.retryable and schedule.retry_count < max_retries:
        next_retry_at = now + retry_delay(policy.backoff, schedule.retry_count, schedule.id)
        repository.mark_retry_scheduled(
            schedule.id,
            retry_count=schedule.retry_count + 1,
            next_retry_at=next_retry_at,
            last_error=last_error,
            error_class=failure.error_class,
            now=now,
        )
        repository.record_attempt(attempt)
        summary.retried += 1
        logger.warning(
            "schedule_retry_scheduled",
            extra={
                **fields,
                "retry_count": schedule.retry_count + 1,
                "next_retry_at": next_retry_at.isoformat(),
            },
        )
        return
    repository.mark_failed_permanently(
        schedule.id, last_error=last_error, error_class=failure.error_class, now=now
    )
    final = "expired" if isinstance(failure, ScheduleExpired) else "failed_permanently"
    repository.record_attempt(replace(attempt, outcome=final))
    summary.failed_permanently += 1
    if final == "expired":
        summary.expired += 1
    outcome.permanent_failures.append(
        PermanentFailure(
            schedule_id=schedule.id,
            flag_key=schedule.flag_key,
            environment=schedule.environment,
            scheduled_at=schedule.scheduled_at,
            retry_count=schedule.retry_count,
            error_class=failure.error_class,
            last_error=last_error,
        )
    )
    logger.error("schedule_failed_permanently", extra={**fields, "next_retry_at": None})


def _log_fields(schedule: DueSchedule) -> dict[str, object]:
    return {
        "schedule_id": str(schedule.id),
        "flag_key": schedule.flag_key,
        "environment": schedule.environment,
        "retry_count": schedule.retry_count,
        "scheduled_at": schedule.scheduled_at.isoformat(),
    }
