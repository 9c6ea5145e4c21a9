"""The run loop: claims due schedules in batches, has flag_scheduler.engine.decide decide them
and writes what it decided, until nothing is due, time runs short or an outage shows."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from itertools import groupby
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from flag_scheduler.engine import decide, ramps, report
from flag_scheduler.engine.budget import statement_budget_ms
from flag_scheduler.engine.messages import outbox_messages
from flag_scheduler.engine.notifier import Notifier
from flag_scheduler.engine.policy import RunPolicy as RunPolicy  # the entry points use it
from flag_scheduler.engine.records import (
    AppliedSchedule,
    DueSchedule,
    FlagState,
    LockHolder,
    OutboxMessage,
    Ramp,
    RunSummary,
    ScheduleOutcome,
)
from flag_scheduler.engine.states import (
    AlarmState,
    ErrorClass,
    MessageKind,
    Outcome,
    RampState,
    Status,
)
from flag_scheduler.errors import (
    AlarmsUnavailable,
    DatabaseUnavailable,
    FlagMissing,
    ScheduleExpired,
    ScheduleFailure,
    SystemicFailure,
)

logger = logging.getLogger(__name__)


class Clock(Protocol):
    def __call__(self) -> datetime: ...


class ScheduleStore(Protocol):
    """What the run loop needs from storage (flag_scheduler.store.repository's
    ScheduleRepository implements it; tests/engine/fakes.py keeps it in memory)."""

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

    def enqueue_messages(self, messages: Sequence[OutboxMessage], *, now: datetime) -> None: ...

    def save_run_state(
        self,
        *,
        started_at: datetime,
        finished_at: datetime,
        request_id: str | None,
        summary: Mapping[str, Any],
    ) -> None: ...

    def lock_ramps(self, ramp_ids: Sequence[UUID]) -> dict[UUID, Ramp]: ...

    def write_ramp_steps(self, steps: Sequence[ramps.RampStep], *, now: datetime) -> None: ...

    def cancel_stages(
        self, schedule_ids: Sequence[UUID], *, now: datetime, request_id: str | None
    ) -> None: ...

    def stamp_next_stages(self, steps: Sequence[ramps.RampStep]) -> None: ...


@runtime_checkable
class CountsStatements(Protocol):
    """A store that counts the statements it sends (RunSummary.statements, the benchmark's
    figure); a store that does not leaves that figure at 0."""

    @property
    def statements(self) -> int: ...


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

    repository: ScheduleStore
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
    alarms: ramps.AlarmReader | None = None
    # Ramp stages that must wait (a guard alarm without data, alarms unreadable, a ramp an
    # operator holds): left due, uncharged, and not claimed again by this run.
    held: set[UUID] = field(default_factory=set)
    # The batch's ramps (locked), and the ramp steps written with its outcomes by schedule.
    batch_ramps: dict[UUID, Ramp] = field(default_factory=dict)
    ramp_steps: dict[UUID, ramps.RampStep] = field(default_factory=dict)
    # The batch's stages refused because a guard alarm was in ALARM (they may roll back).
    alarm_fired: set[UUID] = field(default_factory=set)

    def out_of_time(self) -> bool:
        return self.remaining_ms() < self.policy.time_margin_ms


def process_due_schedules(
    repository: ScheduleStore,
    notifier: Notifier,
    *,
    clock: Clock,
    remaining_ms: Callable[[], int],
    policy: RunPolicy,
    request_id: str | None = None,
    progress: Callable[[RunSummary], None] | None = None,
    alarms: ramps.AlarmReader | None = None,
) -> RunSummary:
    """Process due schedules in batches until none is due or time runs short.

    Each batch is one transaction holding the claim's row locks (see _process_batch). Each
    outcome's notifications (of the kinds `notifier` delivers) are queued in the outbox in
    the same transaction; flag_scheduler.engine.delivery sends them after commit.
    `progress` is told the running totals after each batch. `alarms` reads the guard
    alarms of ramp stages (without it, guarded stages wait).

    Raises:
        DatabaseUnavailable: the connection was lost; the open batch is rolled back, its
            schedules stay due: nothing is lost or charged a retry.
        SystemicFailure: `policy.outage_threshold` different flags failed in a row with
            one retryable error; what was tried is committed, the rest stays due uncharged.
    """
    # (Positional: each field has its own type, so mypy catches a swap.)
    run = _Run(
        repository, clock, policy, request_id, remaining_ms, kinds=notifier.kinds, alarms=alarms
    )
    started_at = clock()
    statements_before = _statements(repository)
    while _next_batch(run):
        if progress is not None:
            progress(run.summary)
        _raise_if_outage(run)
        if run.summary.stopped_for_time:
            break
    _save_run_state(run, started_at)
    run.summary.statements = _statements(repository) - statements_before
    return run.summary


def _statements(repository: ScheduleStore) -> int:
    return repository.statements if isinstance(repository, CountsStatements) else 0


def _save_run_state(run: _Run, started_at: datetime) -> None:
    run.summary.transactions += 1  # the claim that found nothing, or save_run_state's
    run.repository.save_run_state(
        started_at=started_at,
        finished_at=run.clock(),
        request_id=run.request_id,
        summary=run.summary.as_dict(),
    )


def _next_batch(run: _Run) -> bool:
    """Claim, decide, commit and count one batch; False when none was claimed (nothing
    due, or too little time left to start)."""
    policy = run.policy
    left_ms = run.remaining_ms()
    if left_ms < policy.time_margin_ms:
        run.summary.stopped_for_time = True
        return False
    now = run.clock()
    with run.repository.transaction(
        lock_timeout_ms=policy.lock_timeout_ms,
        statement_timeout_ms=statement_budget_ms(
            policy.statement_timeout_ms, window_ms=left_ms - policy.time_margin_ms
        ),
        idle_in_transaction_timeout_ms=policy.idle_in_transaction_timeout_ms,
    ):
        # Neither rows found unrecordable nor flags a sibling run holds may crowd out the
        # rest of the queue.
        claimed = run.repository.claim_due(
            now,
            policy.batch_size,
            skip=run.unrecordable | run.held if run.held else run.unrecordable,
            skip_flags=run.sibling_held,
        )
        if not claimed:
            return False
        run.summary.batches += 1
        batch, outcomes = _gate_ramps(run, claimed, now)
        outcomes += _process_batch(run, batch, now) if batch else []
        _stamp_next_stages(run)
    run.summary.transactions += 1
    report.committed(run.summary, outcomes, now)
    if run.ramp_steps:
        steps = run.ramp_steps
        report.ramp_steps(
            run.summary, [steps[o.schedule.id] for o in outcomes if o.schedule.id in steps]
        )
    return True


def _stamp_next_stages(run: _Run) -> None:
    """Count the hold of each stage the batch applied from the run's clock read just before
    the batch commits: a batch that went on for a while after writing the stage (the
    one-by-one fallback) must not shorten the next stage's observation window.

    If the stamp cannot be written, the next stages keep the time stamped when their
    predecessor was written (early by at most the rest of the batch); the batch commits."""
    if not any(step.next_due_at is not None for step in run.ramp_steps.values()):
        return
    at = run.clock()
    stamped = {
        schedule_id: step.held_from(at) if step.next_due_at is not None else step
        for schedule_id, step in run.ramp_steps.items()
    }
    due_later = [step for step in stamped.values() if step.next_due_at is not None]
    if _written(run, lambda: run.repository.stamp_next_stages(due_later), report.stages_unstamped):
        run.ramp_steps = stamped


def _gate_ramps(
    run: _Run, claimed: list[DueSchedule], now: datetime
) -> tuple[list[DueSchedule], list[ScheduleOutcome]]:
    """Lock the ramps of the claimed stages, park the rows the engine cannot represent
    (halting their ramps), and read the guard alarms (one call for the batch); returns what
    may be decided, and the outcomes of stages a guard alarm refused.

    A batch without ramp stages costs one pass over it, nothing more.
    """
    run.batch_ramps, run.ramp_steps, run.alarm_fired = {}, {}, set()
    ramp_ids = {s.ramp_id for s in claimed if s.ramp_id is not None}
    if ramp_ids:
        try:
            with run.repository.savepoint():
                run.batch_ramps = run.repository.lock_ramps(sorted(ramp_ids, key=lambda i: i.int))
        except DatabaseUnavailable:
            raise
        except ScheduleFailure as failure:
            report.ramps_unreadable(failure)  # every stage of the batch waits (not charged)
    batch = _park_defective(run, claimed, now)
    if not ramp_ids:
        return batch, []
    names = ramps.alarm_names(batch, run.batch_ramps)
    verdict = ramps.gate(batch, run.batch_ramps, _read_alarms(run, names) if names else {})
    run.alarm_fired = verdict.fired
    _cancel_ended(run, verdict.ended, now)
    late, waiting = _expire_waiting(run, verdict.waiting, now)
    run.held.update(schedule.id for schedule in waiting)
    report.stages_waiting(waiting)
    outcomes: list[ScheduleOutcome] = []
    refusals: list[tuple[DueSchedule, ScheduleFailure]] = [*verdict.refused, *late]
    for schedule, refusal in refusals:
        run.summary.claimed += 1
        outcomes += _record_failure(run, schedule, refusal, now)
    return verdict.ready, outcomes


def _cancel_ended(run: _Run, ended: list[DueSchedule], now: datetime) -> None:
    """Cancel the stages of completed or aborted ramps (left live by a race or by hand):
    held, they would stay due forever. If that cannot be written they wait (next run)."""
    if not ended:
        return
    ids = [schedule.id for schedule in ended]
    run.held.update(ids)  # not claimed again by this run, cancelled or not
    if _written(
        run,
        lambda: run.repository.cancel_stages(ids, now=now, request_id=run.request_id),
        report.park_failed,
    ):
        logger.warning("ended_ramp_stages_cancelled", extra={"schedule_ids": [str(i) for i in ids]})


def _expire_waiting(
    run: _Run, waiting: list[DueSchedule], now: datetime
) -> tuple[list[tuple[DueSchedule, ScheduleFailure]], list[DueSchedule]]:
    """Split waiting stages into those past the lateness limit (they expire and halt their
    ramp, as any late stage does) and those that go on waiting. A stage whose ramp an
    operator holds (not locked here) is left to the operator."""
    late: list[tuple[DueSchedule, ScheduleFailure]] = []
    still: list[DueSchedule] = []
    for schedule in waiting:
        ramp = run.batch_ramps.get(schedule.ramp_id) if schedule.ramp_id else None
        try:
            if ramp is not None and ramp.state == RampState.ACTIVE:
                decide.refuse_if_expired(schedule, now=now, policy=run.policy)
        except ScheduleExpired as expired:
            late.append((schedule, expired))
        else:
            still.append(schedule)
    return late, still


def _read_alarms(run: _Run, names: list[str]) -> Mapping[str, AlarmState] | None:
    """The guard alarms' states, or None (the guarded stages wait) when they cannot be read."""
    if run.alarms is None:
        report.alarms_unavailable(names, "no alarm reader is configured")
        return None
    try:
        return run.alarms.alarm_states(names)
    except AlarmsUnavailable as exc:
        report.alarms_unavailable(names, str(exc))
        return None


def _raise_if_outage(run: _Run) -> None:
    streak = run.streak
    if streak.is_outage(run.policy.outage_threshold):
        raise SystemicFailure(
            f"{len(streak.flags)} different flags failed in a row with"
            f" {streak.error_class}; stopped the run to spare the rest their retries",
            error_class=streak.error_class or ErrorClass.UNKNOWN,
            flags=len(streak.flags),
            evidence=streak.evidence,
        )


def _process_batch(run: _Run, batch: list[DueSchedule], now: datetime) -> list[ScheduleOutcome]:
    """Decide and write a claimed batch; returns outcomes in processing order.

    Its schedules are decided together: the flags no other transaction holds locked in one
    statement that never waits, then flag writes, outcomes, history rows and outbox
    messages written in four statements; only when one of those fails does the batch fall
    back to one savepoint per schedule, so one bad schedule never undoes its neighbours.

    A run never waits for a flag while it holds another: it locks the flags no one else
    holds, without waiting, and hands the rest back (left untouched, their claim ends at
    commit: still due, not charged, and first in a later claim). So a sibling run is only
    ever kept waiting for the few statements of a batch, never for a lock timeout. A batch
    whose every flag is held waits for one, holding none (see _wait_for_first_flag).
    """
    ordered = sorted(batch, key=decide.batch_order)
    outcomes: list[ScheduleOutcome] = []
    flags = run.repository.lock_free_flags(_flag_ids(ordered))
    if not flags:
        waited = _wait_for_first_flag(run, ordered, now)
        outcomes, ordered = waited.outcomes, waited.rest
        run.summary.claimed += waited.settled
        flags = run.repository.lock_free_flags(_flag_ids(ordered)) if ordered else {}
    ready = [schedule for schedule in ordered if schedule.flag_id in flags]
    # What is handed back is counted by the run that decides it (this one, in a later
    # batch, or a sibling), so concurrent runs' claimed counts add up.
    run.summary.claimed += len(ready)
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


@dataclass(frozen=True)
class _Waited:
    """What waiting for a batch's first flag settled, and what is left to try."""

    outcomes: list[ScheduleOutcome]
    #: Schedules settled by the wait: recorded as failed, or parked when that failed.
    settled: int
    rest: list[DueSchedule]


def _wait_for_first_flag(run: _Run, ordered: list[DueSchedule], now: datetime) -> _Waited:
    """Wait for the first flag of a batch whose every flag another transaction holds.

    The batch holds no flag lock while it waits, so no run waits on it in turn; and each
    such batch settles the first flag's schedules (or learns the flag is free now), so
    runs always move on.
    """
    policy = run.policy
    flag_id = ordered[0].flag_id
    waiting = [schedule for schedule in ordered if schedule.flag_id == flag_id]
    rest = ordered[len(waiting) :]
    if run.remaining_ms() - policy.time_margin_ms < policy.lock_timeout_ms:
        # A wait the time budget would cut short proves nothing about the holder.
        run.summary.stopped_for_time = True
        return _Waited([], 0, [])
    verdict = _wait_for_flag(run, flag_id)
    if verdict is None:
        return _Waited([], 0, ordered)
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
        return _Waited([], 0, rest)
    return _Waited(_record_failures(run, waiting, verdict, now), len(waiting), rest)


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
    marks: dict[UUID, dict[str, decide.Order]] | None = None
    try:
        with run.repository.savepoint():
            # The flags were locked before this reads which fields later schedules set: a
            # run that applied a later schedule to one of them had committed when the lock
            # was granted, and this statement's snapshot sees it.
            marks = decide.field_marks(run.repository.applied_since(decide.oldest_by_flag(ready)))
            decision = _apply_group(run, ready, flags, marks, now)
    except DatabaseUnavailable:
        raise
    except ScheduleFailure:
        # One of them made a bulk statement fail: isolate it. What the group read still
        # holds (the flags stay locked by this transaction); what it wrote is undone.
        return _apply_one_by_one(run, ready, dict(flags), marks, now)
    _took_effect(run, decision)
    return decision.outcomes


def _apply_one_by_one(
    run: _Run,
    ready: list[DueSchedule],
    flags: dict[UUID, FlagState],
    marks: dict[UUID, dict[str, decide.Order]] | None,
    now: datetime,
) -> list[ScheduleOutcome]:
    """Apply schedules one savepoint each, so one bad schedule never undoes its neighbours.

    `flags` and `marks` (None: not read) are kept up to date as each savepoint commits.
    """
    outcomes: list[ScheduleOutcome] = []
    for schedule in ready:
        if run.out_of_time():
            # Unprocessed claims are untouched and unlock at commit: still due.
            run.summary.stopped_for_time = True
            break
        outcomes += _apply_alone(run, schedule, flags, marks, now)
        if run.streak.is_outage(run.policy.outage_threshold):
            break  # the untried rest of the batch unlocks at commit, uncharged
    return outcomes


def _apply_alone(
    run: _Run,
    schedule: DueSchedule,
    flags: dict[UUID, FlagState],
    marks: dict[UUID, dict[str, decide.Order]] | None,
    now: datetime,
) -> list[ScheduleOutcome]:
    """Apply one schedule in its own savepoint, or record why it failed."""
    try:
        with run.repository.savepoint():
            known = marks
            if known is None:
                applied = run.repository.applied_since(decide.oldest_by_flag([schedule]))
                known = decide.field_marks(applied)
            decision = _apply_group(run, [schedule], flags, known, now)
    except DatabaseUnavailable:
        raise
    except ScheduleFailure as failure:
        return _record_failure(run, schedule, failure, now)
    flags.update(decision.flags)
    if marks is not None:
        marks.update(decision.marks)
    _took_effect(run, decision)
    return decision.outcomes


def _apply_group(
    run: _Run,
    schedules: list[DueSchedule],
    flags: Mapping[UUID, FlagState],
    marks: decide.Marks,
    now: datetime,
) -> decide.Decision:
    """Decide schedules sorted by batch_order, whose flags this transaction holds, and
    write the decision, inside the caller's savepoint.

    Raises:
        ScheduleFailure: a statement failed; the caller's savepoint undoes everything.
    """
    decision = decide.decide(schedules, flags=flags, marks=marks, now=now, policy=run.policy)
    if decision.flags:
        run.repository.write_flags(list(decision.flags.values()), now)
    _write_outcomes(run, decision.outcomes, now)
    return decision


def _took_effect(run: _Run, decision: decide.Decision) -> None:
    # A flag that took its change breaks a streak of failures: not an outage. (A group holds
    # no retryable failure: those abort the group, and the fallback retries one by one.)
    if decision.took_effect:
        run.streak.succeeded()


def _write_outcomes(run: _Run, outcomes: list[ScheduleOutcome], now: datetime) -> None:
    """Write outcomes, their messages and, for ramp stages, what they do to their ramps, in
    the caller's savepoint: a stage and its successor commit together or not at all."""
    run.repository.write_outcomes(
        outcomes,
        now=now,
        finished_at=run.clock(),
        request_id=run.request_id,
        messages=outbox_messages(outcomes, run.kinds),
    )
    if run.batch_ramps:
        # The next stage's hold counts from the run's clock read after the stage was
        # written, so it can never start before a full hold after the stage's application.
        applied_at = run.clock()
        found = ramps.steps(outcomes, run.batch_ramps, applied_at=applied_at, fired=run.alarm_fired)
        if found:
            run.repository.write_ramp_steps(found, now=applied_at)
            run.ramp_steps.update((step.schedule_id, step) for step in found)


def _failure_outcome(
    run: _Run, schedule: DueSchedule, failure: ScheduleFailure, now: datetime
) -> ScheduleOutcome:
    """Decide a failed attempt, and count a retryable failure towards the outage streak."""
    # From the moment of failure, not the batch's start: a fallback slowed by lock
    # timeouts must not commit retries that are already due.
    failed_at = max(run.clock(), now) if failure.retryable else now
    outcome = decide.failure_outcome(schedule, failure, failed_at=failed_at, policy=run.policy)
    if failure.retryable:
        run.streak.failed(schedule.flag_id, failure.error_class, outcome.last_error or "")
    return outcome


def _record_failures(
    run: _Run, schedules: list[DueSchedule], failure: ScheduleFailure, now: datetime
) -> list[ScheduleOutcome]:
    """Write the failed attempts of schedules one failure struck, as one set in one
    savepoint; one savepoint each only when the set cannot be written."""
    outcomes = [_failure_outcome(run, schedule, failure, now) for schedule in schedules]
    try:
        with run.repository.savepoint():
            _write_outcomes(run, outcomes, now)
    except DatabaseUnavailable:
        raise
    except ScheduleFailure:
        return [kept for outcome in outcomes for kept in _record_outcome(run, outcome, now)]
    return outcomes


def _record_failure(
    run: _Run, schedule: DueSchedule, failure: ScheduleFailure, now: datetime
) -> list[ScheduleOutcome]:
    """Write one schedule's failed attempt (see _record_outcome)."""
    return _record_outcome(run, _failure_outcome(run, schedule, failure, now), now)


def _record_outcome(run: _Run, outcome: ScheduleOutcome, now: datetime) -> list[ScheduleOutcome]:
    """Write one outcome and its messages in its own savepoint; when that cannot be
    written, park the schedule and return []."""
    try:
        with run.repository.savepoint():
            _write_outcomes(run, [outcome], now)
    except DatabaseUnavailable:
        raise
    except ScheduleFailure as unrecordable:
        reason = f"its outcome could not be written: {unrecordable.error_class}: "
        reason += str(unrecordable)
        if _park(run, {outcome.schedule.id: reason}, [outcome.schedule], now):
            _halt_parked_stages(run, [outcome.schedule], {outcome.schedule.id: reason}, now)
        return []
    return [outcome]


def _halt_parked_stages(
    run: _Run, schedules: list[DueSchedule], reasons: Mapping[UUID, str], now: datetime
) -> None:
    """A parked stage never applies: halt its ramp, which would otherwise wait for it
    forever (active, with no live stage)."""
    parked = [
        ScheduleOutcome(
            schedule,
            Status.FAILED,
            Outcome.FAILED_PERMANENTLY,
            attempt=schedule.retry_count + 1,
            error_class=ErrorClass.UNRECORDABLE,
            error=reasons[schedule.id],
        )
        for schedule in schedules
        if schedule.ramp_id is not None
        and (ramp := run.batch_ramps.get(schedule.ramp_id)) is not None
        and ramp.state == RampState.ACTIVE
    ]
    found = ramps.steps(parked, run.batch_ramps, applied_at=now)
    # If the halt cannot be written the ramp stays active; an operator can abort it.
    if not found or not _written(
        run, lambda: run.repository.write_ramp_steps(found, now=now), report.park_failed
    ):
        return
    run.ramp_steps.update((step.schedule_id, step) for step in found)
    # The halt's alert, as a stage failing for good sends; in a savepoint of its own, since
    # what could not be written may be that stage's message.
    halted = {step.schedule_id for step in found}
    alerts = outbox_messages([o for o in parked if o.schedule.id in halted], run.kinds)
    _written(
        run, lambda: run.repository.enqueue_messages(alerts, now=now), report.halt_alert_unqueued
    )


def _park_defective(run: _Run, claimed: list[DueSchedule], now: datetime) -> list[DueSchedule]:
    """Park the claimed rows the engine cannot represent (counted as claimed); returns the
    others."""
    defective = [schedule for schedule in claimed if schedule.defect is not None]
    if not defective:
        return claimed
    # A stage whose ramp this run could not lock waits with its ramp (an operator is
    # steering it): parked now, it would leave an active ramp with no stage, never halted.
    unlocked = {s.id for s in defective if s.ramp_id and s.ramp_id not in run.batch_ramps}
    run.held.update(unlocked)
    defective = [schedule for schedule in defective if schedule.id not in unlocked]
    run.summary.claimed += len(defective)
    reasons = {s.id: s.defect or "" for s in defective}
    if _park(run, reasons, defective, now):
        _halt_parked_stages(run, defective, reasons, now)
    return [schedule for schedule in claimed if schedule.defect is None]


def _park(run: _Run, reasons: dict[UUID, str], schedules: list[DueSchedule], now: datetime) -> bool:
    """Take unrecordable schedules out of the queue as permanently failed, and count them;
    False when even that failed.

    Whatever happens they are skipped for the rest of the run, so they can never crowd out
    the rest; if parking fails they stay untouched (still due, uncharged) and the next run
    tries again (their ramps wait with them).
    """
    run.unrecordable.update(reasons)
    run.summary.unrecordable += len(schedules)
    parked = _written(
        run,
        lambda: run.repository.park_unrecordable(reasons, now=now, request_id=run.request_id),
        report.park_failed,
    )
    report.unrecordable(schedules, reasons, parked=parked)
    return parked


def _written(
    run: _Run, write: Callable[[], object], failed: Callable[[ScheduleFailure], None]
) -> bool:
    """Run `write` in a savepoint; if the rows refuse it, roll back to the savepoint, tell
    `failed` and return False (a lost connection is not the rows' doing: it propagates)."""
    try:
        with run.repository.savepoint():
            write()
    except DatabaseUnavailable:
        raise
    except ScheduleFailure as failure:
        failed(failure)
        return False
    return True
