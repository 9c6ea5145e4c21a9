"""The run loop against an in-memory store: batches, the savepoint fallback, the outage
streak, the time budget, waits for held flags and hand-backs."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from uuid import UUID

import pytest

from flag_scheduler.engine.backoff import BackoffPolicy
from flag_scheduler.engine.notifier import NullNotifier, SendReport
from flag_scheduler.engine.records import ClaimedMessage, RunSummary
from flag_scheduler.engine.run_loop import RunPolicy, process_due_schedules
from flag_scheduler.engine.states import ErrorClass, MessageKind, Outcome, Status
from flag_scheduler.errors import (
    DatabaseUnavailable,
    PermanentDatabaseError,
    SystemicFailure,
    TransientDatabaseError,
)
from tests.engine.fakes import APPLICATION, SIBLING, FakeStore
from tests.support import T0

POLICY = RunPolicy(
    max_retries=3,
    batch_size=100,
    time_margin_ms=1_000,
    backoff=BackoffPolicy(jitter_seconds=0),
    lock_timeout_ms=2_000,
    statement_timeout_ms=10_000,
    outage_threshold=5,
)


def _run(
    store: FakeStore,
    now: datetime = T0,
    *,
    policy: RunPolicy = POLICY,
    remaining: Iterable[int] | None = None,
    clock: Callable[[], datetime] | None = None,
    kinds: frozenset[MessageKind] = frozenset(),
    progress: Callable[[RunSummary], None] | None = None,
) -> RunSummary:
    budget = iter(remaining) if remaining is not None else itertools.repeat(60_000)
    return process_due_schedules(
        store,
        _Notifier(kinds) if kinds else NullNotifier(),
        clock=clock or (lambda: now),
        remaining_ms=lambda: next(budget),
        policy=policy,
        request_id="req-1",
        progress=progress,
    )


class _Notifier:
    def __init__(self, kinds: frozenset[MessageKind]) -> None:
        self.kinds = kinds

    def send(self, messages: list[ClaimedMessage], *, deadline: float) -> SendReport:
        return SendReport()


def _serialization() -> TransientDatabaseError:
    return TransientDatabaseError(
        "could not serialize access", error_class=ErrorClass.SERIALIZATION_FAILURE
    )


def _flags(store: FakeStore, count: int) -> list[UUID]:
    """Flags whose ids sort in creation order (a batch is processed in flag order)."""
    return [store.add_flag(f"flag-{i}", flag_id=UUID(int=i + 1)) for i in range(count)]


def _one_each(store: FakeStore, flags: list[UUID], updates: dict[str, object]) -> list[UUID]:
    return [store.add_schedule(flag, T0 - timedelta(minutes=1), updates) for flag in flags]


# --- the fast path ---


def test_a_batch_is_decided_and_written_in_a_handful_of_statements() -> None:
    store = FakeStore()
    for flag in _flags(store, 50):
        store.add_schedule(flag, T0 - timedelta(minutes=2), {"enabled": True})
        store.add_schedule(flag, T0 - timedelta(minutes=1), {"rollout_percentage": 50})

    summary = _run(store)

    assert (summary.claimed, summary.applied, summary.batches, summary.transactions) == (
        100,
        100,
        1,
        2,
    )
    # transaction, claim, lock flags, applied since, write flags, outcomes, attempts; then
    # the empty claim's transaction and claim, and the run state.
    assert summary.statements == store.statements == 10
    assert store.calls["savepoint"] == 1
    assert all(store.fields(f) == {"enabled": True, "rollout_percentage": 50} for f in store.flags)


def test_schedules_not_yet_due_are_left_alone() -> None:
    store = FakeStore()
    flag = store.add_flag()
    future = store.add_schedule(flag, T0 + timedelta(seconds=1), {"enabled": True})
    assert _run(store).claimed == 0
    assert store.status(future) == Status.PENDING


def test_a_run_takes_batches_until_nothing_is_due() -> None:
    store = FakeStore()
    _one_each(store, _flags(store, 10), {"enabled": True})
    summary = _run(store, policy=RunPolicy(batch_size=4, time_margin_ms=1_000))
    assert (summary.batches, summary.applied, summary.claimed) == (3, 10, 10)
    assert store.calls["claim_due"] == 4  # the last finds nothing


def test_a_pending_change_between_two_applied_ones_never_overwrites_the_latest() -> None:
    """Kills the mutant whose supersede marks keep the earliest later-applied change."""
    store = FakeStore()
    flag = store.add_flag(rollout=30)
    for minutes, value in ((-3, 10), (-1, 30)):
        at = T0 + timedelta(minutes=minutes)
        store.add_schedule(flag, at, {"rollout_percentage": value}, status=Status.APPLIED)
    between = store.add_schedule(flag, T0 - timedelta(minutes=2), {"rollout_percentage": 20})
    before = store.add_schedule(flag, T0 - timedelta(minutes=4), {"enabled": True})

    summary = _run(store)

    assert store.fields(flag) == {"enabled": True, "rollout_percentage": 30}
    assert (store.status(between), store.status(before)) == (Status.SUPERSEDED, Status.APPLIED)
    assert (summary.claimed, summary.applied, summary.superseded) == (2, 1, 1)


def test_a_late_retry_sets_only_the_fields_no_later_change_has_set() -> None:
    store = FakeStore()
    flag = store.add_flag(enabled=False)
    later = T0 - timedelta(minutes=1)
    store.add_schedule(flag, later, {"enabled": False}, status=Status.APPLIED)
    retry = store.add_schedule(
        flag,
        T0 - timedelta(minutes=5),
        {"enabled": True, "rollout_percentage": 10},
        status=Status.FAILED,
        retry_count=1,
        next_retry_at=T0,
    )

    summary = _run(store)

    assert store.fields(flag) == {"enabled": False, "rollout_percentage": 10}
    assert (summary.applied, summary.retry_succeeded) == (1, 1)
    assert store.history_of(retry) == [(2, Outcome.APPLIED, None)]


# --- the savepoint fallback ---


def test_a_failing_bulk_write_falls_back_and_only_that_schedule_fails() -> None:
    store = FakeStore()
    flags = _flags(store, 5)
    schedules = _one_each(store, flags, {"enabled": True})
    store.failing_flags[flags[2]] = _serialization()

    summary = _run(store)

    assert [store.status(s) for s in schedules] == [Status.APPLIED] * 2 + [Status.FAILED] + [
        Status.APPLIED
    ] * 2
    assert store.schedules[schedules[2]].retry_count == 1
    assert (summary.applied, summary.retried, summary.claimed) == (4, 1, 5)
    assert store.calls["savepoint"] == 1 + 5 + 1  # the group, one each, the failure's own


def test_the_fallback_reads_flags_and_field_marks_once_not_per_schedule() -> None:
    store = FakeStore()
    flags = _flags(store, 10)
    _one_each(store, flags, {"enabled": True})
    store.failing_flags[flags[0]] = _serialization()

    _run(store)

    # Read once for the group; the fallback keeps what it read (the flags stay locked).
    assert (store.calls["lock_free_flags"], store.calls["applied_since"]) == (1, 1)


def test_the_fallback_carries_each_flags_state_from_savepoint_to_savepoint() -> None:
    store = FakeStore()
    flags = _flags(store, 2)
    store.add_schedule(flags[1], T0 - timedelta(minutes=2), {"rollout_percentage": 10})
    store.add_schedule(flags[1], T0 - timedelta(minutes=1), {"enabled": True})
    store.failing_flags[flags[0]] = _serialization()
    store.add_schedule(flags[0], T0 - timedelta(minutes=1), {"enabled": True})

    summary = _run(store)

    # The second schedule's write must start from the first's result, not the group's read.
    assert store.fields(flags[1]) == {"enabled": True, "rollout_percentage": 10}
    assert (summary.applied, summary.retried) == (2, 1)


def test_the_fallback_reads_marks_per_schedule_when_the_group_could_not() -> None:
    store = FakeStore()
    flags = _flags(store, 3)
    _one_each(store, flags, {"enabled": True})
    calls = itertools.count()
    original = store.applied_since

    def applied_since_failing_once(since):  # type: ignore[no-untyped-def]
        if next(calls) == 0:
            raise _serialization()
        return original(since)

    store.applied_since = applied_since_failing_once  # type: ignore[method-assign]

    summary = _run(store)

    assert summary.applied == 3
    assert next(calls) == 1 + 3


def test_the_fallback_stops_at_the_time_margin_not_at_zero() -> None:
    """Kills the mutant that weakens the fallback's time check to `remaining <= 0`."""
    store = FakeStore()
    flags = _flags(store, 10)
    schedules = _one_each(store, flags, {"enabled": True})
    store.failing_flags[flags[0]] = _serialization()
    # The margin is 1 s: the run starts with a minute; in the fallback the time left
    # crosses the margin after three schedules, yet never reaches zero.
    budget = itertools.chain([60_000, 3_000, 2_000, 1_000], itertools.repeat(999))

    summary = _run(store, remaining=budget)

    assert [store.status(s) for s in schedules].count(Status.PENDING) == 7
    assert (summary.retried, summary.applied) == (1, 2)
    assert summary.stopped_for_time
    assert summary.claimed == 10  # claimed, then left untouched: still due, uncharged


# --- the time budget ---


def test_no_work_starts_with_less_time_left_than_the_margin() -> None:
    store = FakeStore()
    schedule = _one_each(store, _flags(store, 1), {"enabled": True})[0]
    summary = _run(store, remaining=itertools.repeat(999))
    assert summary.stopped_for_time
    assert (summary.claimed, store.calls["claim_due"]) == (0, 0)
    assert store.status(schedule) == Status.PENDING


def test_time_running_out_between_batches_leaves_the_rest_due() -> None:
    store = FakeStore()
    schedules = _one_each(store, _flags(store, 10), {"enabled": True})
    policy = RunPolicy(batch_size=4, time_margin_ms=1_000)
    summary = _run(store, policy=policy, remaining=itertools.chain([60_000], itertools.repeat(0)))
    assert summary.stopped_for_time
    assert (summary.batches, summary.applied) == (1, 4)
    assert [store.status(s) for s in schedules].count(Status.PENDING) == 6


@pytest.mark.parametrize(
    ("remaining_ms", "statement_timeout_ms"),
    [
        (60_000, 10_000),  # plenty of time: the configured timeout
        (5_000, 4_000),  # cut to the time left minus the margin
        (1_500, 1_000),  # never below the floor
    ],
)
def test_each_transactions_statement_timeout_ends_before_the_margin(
    remaining_ms: int, statement_timeout_ms: int
) -> None:
    store = FakeStore()
    _run(store, remaining=itertools.repeat(remaining_ms))
    assert store.transactions[0]["statement_timeout_ms"] == statement_timeout_ms
    assert store.transactions[0]["lock_timeout_ms"] == POLICY.lock_timeout_ms


# --- the outage streak ---


def test_a_streak_of_one_retryable_failure_across_flags_stops_the_run_sparing_the_rest() -> None:
    store = FakeStore()
    flags = _flags(store, 8)
    schedules = _one_each(store, flags, {"enabled": True})
    for flag in flags:
        store.failing_flags[flag] = _serialization()

    with pytest.raises(SystemicFailure) as raised:
        _run(store)

    assert (raised.value.flags, raised.value.error_class) == (5, ErrorClass.SERIALIZATION_FAILURE)
    assert len(raised.value.evidence) == 5
    retry_counts = [store.schedules[s].retry_count for s in schedules]
    assert retry_counts == [1] * 5 + [0] * 3  # the untried rest: still due, uncharged
    assert store.state.run_states == []


def test_failures_on_one_flag_are_not_an_outage() -> None:
    store = FakeStore()
    (flag,) = _flags(store, 1)
    for minutes in range(8):
        store.add_schedule(flag, T0 - timedelta(minutes=minutes + 1), {"enabled": True})
    store.failing_flags[flag] = _serialization()
    assert _run(store).retried == 8


def test_failures_of_alternating_classes_are_not_an_outage() -> None:
    store = FakeStore()
    flags = _flags(store, 8)
    _one_each(store, flags, {"enabled": True})
    for i, flag in enumerate(flags):
        error_class = ErrorClass.DEADLOCK if i % 2 else ErrorClass.SERIALIZATION_FAILURE
        store.failing_flags[flag] = TransientDatabaseError("x", error_class=error_class)
    assert _run(store).retried == 8


def test_a_flag_that_takes_its_change_breaks_the_streak() -> None:
    store = FakeStore()
    flags = _flags(store, 9)
    _one_each(store, flags, {"enabled": True})
    for i, flag in enumerate(flags):
        if i != 4:  # four fail, one applies, four fail: never five in a row
            store.failing_flags[flag] = _serialization()
    summary = _run(store)
    assert (summary.retried, summary.applied) == (8, 1)


def test_permanent_failures_do_not_count_towards_an_outage() -> None:
    store = FakeStore()
    flags = _flags(store, 8)
    _one_each(store, flags, {"enabled": True})
    for flag in flags:
        store.failing_flags[flag] = PermanentDatabaseError(
            "violates check", error_class=ErrorClass.INTEGRITY_ERROR
        )
    assert _run(store).failed_permanently == 8


def test_a_threshold_of_zero_never_stops_a_run() -> None:
    store = FakeStore()
    flags = _flags(store, 8)
    _one_each(store, flags, {"enabled": True})
    for flag in flags:
        store.failing_flags[flag] = _serialization()
    policy = RunPolicy(time_margin_ms=1_000, outage_threshold=0)
    assert _run(store, policy=policy).retried == 8


# --- waits for flags other transactions hold ---


def test_a_flag_an_application_holds_past_the_lock_timeout_is_charged_a_retry() -> None:
    store = FakeStore()
    (flag,) = _flags(store, 1)
    (schedule,) = _one_each(store, [flag], {"enabled": True})
    store.held_flags[flag] = [APPLICATION]

    summary = _run(store)

    assert (summary.claimed, summary.retried) == (1, 1)
    assert store.history_of(schedule) == [(1, Outcome.RETRY_SCHEDULED, ErrorClass.LOCK_TIMEOUT)]


def test_schedules_behind_a_held_flag_are_written_as_one_set() -> None:
    store = FakeStore()
    (flag,) = _flags(store, 1)
    for minutes in range(3):
        store.add_schedule(flag, T0 - timedelta(minutes=minutes + 1), {"enabled": True})
    store.held_flags[flag] = [APPLICATION]

    summary = _run(store)

    assert summary.retried == 3
    assert (store.calls["write_outcomes"], store.calls["savepoint"]) == (1, 1)


def test_a_schedule_parked_on_the_wait_path_counts_as_claimed() -> None:
    store = FakeStore()
    (flag,) = _flags(store, 1)
    (schedule,) = _one_each(store, [flag], {"enabled": True})
    store.held_flags[flag] = [APPLICATION]
    store.failing_outcomes[schedule] = PermanentDatabaseError(
        "value too long", error_class=ErrorClass.DATA_ERROR
    )

    summary = _run(store)

    assert (summary.claimed, summary.unrecordable, summary.retried) == (1, 1, 0)
    assert store.history_of(schedule) == [
        (None, Outcome.FAILED_PERMANENTLY, ErrorClass.UNRECORDABLE)
    ]


def test_a_flag_a_sibling_run_holds_is_left_due_uncharged_and_not_waited_for_again() -> None:
    store = FakeStore()
    (flag,) = _flags(store, 1)
    (schedule,) = _one_each(store, [flag], {"enabled": True})
    store.held_flags[flag] = [SIBLING]

    summary = _run(store)

    assert (summary.claimed, summary.retried) == (0, 0)
    assert (store.status(schedule), store.schedules[schedule].retry_count) == (Status.PENDING, 0)
    assert store.calls["wait_for_flag"] == 1


def test_a_flag_let_go_during_the_wait_is_applied_in_the_same_batch() -> None:
    store = FakeStore()
    (flag,) = _flags(store, 1)
    _one_each(store, [flag], {"enabled": True})
    store.held_flags[flag] = [APPLICATION]
    store.released_on_wait.add(flag)
    summary = _run(store)
    assert (summary.applied, summary.batches) == (1, 1)


def test_a_holder_that_cannot_be_seen_is_looked_for_once_more_without_waiting() -> None:
    store = FakeStore()
    (flag,) = _flags(store, 1)
    _one_each(store, [flag], {"enabled": True})
    store.held_flags[flag] = []  # the server names nobody
    summary = _run(store)
    assert store.calls["wait_for_flag"] == 2
    assert summary.retried == 1


def test_held_flags_of_a_batch_are_handed_back_and_counted_once_decided() -> None:
    store = FakeStore()
    flags = _flags(store, 3)
    schedules = _one_each(store, flags, {"enabled": True})
    store.held_flags[flags[1]] = [APPLICATION]

    summary = _run(store)

    # The first batch applies two and hands one back; the next waits for it and charges it.
    assert (summary.batches, summary.applied, summary.retried, summary.claimed) == (2, 2, 1, 3)
    assert store.schedules[schedules[1]].retry_count == 1


def test_a_wait_the_time_left_would_cut_short_is_not_started() -> None:
    store = FakeStore()
    (flag,) = _flags(store, 1)
    (schedule,) = _one_each(store, [flag], {"enabled": True})
    store.held_flags[flag] = [APPLICATION]
    # 2.5 s left: past the 1 s margin, but not the 2 s lock timeout more.
    summary = _run(store, remaining=itertools.repeat(2_500))
    assert summary.stopped_for_time
    assert (summary.claimed, store.calls["wait_for_flag"]) == (0, 0)
    assert store.schedules[schedule].retry_count == 0


def test_a_flag_deleted_after_the_claim_fails_its_schedules_for_good() -> None:
    store = FakeStore()
    (flag,) = _flags(store, 1)
    (schedule,) = _one_each(store, [flag], {"enabled": True})
    del store.flags[flag]
    summary = _run(store)
    assert summary.failed_permanently == 1
    assert store.history_of(schedule) == [(1, Outcome.FAILED_PERMANENTLY, ErrorClass.FLAG_MISSING)]


# --- rows and outcomes that cannot be recorded ---


def test_a_defective_row_is_parked_counted_and_the_rest_applies() -> None:
    store = FakeStore()
    flags = _flags(store, 2)
    bad, good = _one_each(store, flags, {"enabled": True})
    store.schedules[bad].defect = "retry_count 11 is outside 0..10"

    summary = _run(store)

    assert (summary.claimed, summary.unrecordable, summary.applied) == (2, 1, 1)
    assert store.schedules[bad].last_error == "unrecordable: retry_count 11 is outside 0..10"
    assert store.status(good) == Status.APPLIED


def test_a_row_that_cannot_even_be_parked_is_skipped_for_the_rest_of_the_run() -> None:
    store = FakeStore()
    (bad,) = _one_each(store, _flags(store, 1), {"enabled": True})
    store.schedules[bad].defect = "scheduled_at is not a representable moment"
    store.failing_park = PermanentDatabaseError("no", error_class=ErrorClass.DATA_ERROR)

    summary = _run(store, policy=RunPolicy(batch_size=1, time_margin_ms=1_000))

    assert (summary.unrecordable, summary.batches) == (1, 1)
    assert store.status(bad) == Status.PENDING  # untouched: the next run tries again


def test_an_outcome_that_cannot_be_written_is_parked_and_its_neighbours_commit() -> None:
    store = FakeStore()
    flags = _flags(store, 3)
    schedules = _one_each(store, flags, {"enabled": True})
    store.failing_outcomes[schedules[1]] = PermanentDatabaseError(
        "value too long", error_class=ErrorClass.DATA_ERROR
    )

    summary = _run(store)

    assert [store.status(s) for s in schedules] == [Status.APPLIED, Status.FAILED, Status.APPLIED]
    assert (summary.applied, summary.unrecordable, summary.claimed) == (2, 1, 3)
    assert store.fields(flags[1]) == {"enabled": False, "rollout_percentage": 0}


def test_a_lost_connection_fails_the_run_and_undoes_the_open_batch() -> None:
    store = FakeStore()
    schedules = _one_each(store, _flags(store, 3), {"enabled": True})
    store.connection_lost_in = "write_outcomes"

    with pytest.raises(DatabaseUnavailable):
        _run(store)

    assert [store.status(s) for s in schedules] == [Status.PENDING] * 3
    assert all(store.schedules[s].retry_count == 0 for s in schedules)


# --- what a run records and reports ---


def test_a_retry_is_timed_from_the_failure_not_from_the_batch_start() -> None:
    store = FakeStore()
    (flag,) = _flags(store, 1)
    (schedule,) = _one_each(store, [flag], {"enabled": True})
    store.failing_flags[flag] = _serialization()
    ticks = itertools.count()

    _run(store, clock=lambda: T0 + timedelta(seconds=next(ticks)))

    next_retry_at = store.schedules[schedule].next_retry_at
    assert next_retry_at is not None
    assert next_retry_at - T0 > timedelta(minutes=2)  # the batch began at T0 + 1 s at most


def test_expiries_count_as_permanent_failures_and_expiries() -> None:
    store = FakeStore()
    _one_each(store, _flags(store, 1), {"enabled": True})
    summary = _run(store, T0 + timedelta(days=2))
    assert (summary.failed_permanently, summary.expired) == (1, 1)


def test_the_run_state_and_progress_see_every_batch() -> None:
    store = FakeStore()
    _one_each(store, _flags(store, 5), {"enabled": True})
    seen: list[int] = []
    policy = RunPolicy(batch_size=2, time_margin_ms=1_000)
    summary = _run(store, policy=policy, progress=lambda s: seen.append(s.applied))
    assert seen == [2, 4, 5]
    assert store.state.run_states == [summary.as_dict() | {"statements": 0}]


def test_only_the_kinds_someone_delivers_are_queued() -> None:
    store = FakeStore()
    flags = _flags(store, 2)
    _one_each(store, flags, {"enabled": True})
    store.failing_flags[flags[0]] = PermanentDatabaseError("x", error_class=ErrorClass.DATA_ERROR)

    _run(store, kinds=frozenset({MessageKind.FLAG_CHANGED}))

    assert [m.kind for m in store.state.outbox] == [MessageKind.FLAG_CHANGED]
