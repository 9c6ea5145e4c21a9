"""The pure decision core: supersede per field, ties, retry, permanent failure and expiry."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import timedelta
from uuid import UUID, uuid4

import pytest

from flag_scheduler.engine import decide
from flag_scheduler.engine.backoff import BackoffPolicy, retry_delay
from flag_scheduler.engine.limits import MAX_ERROR_LENGTH
from flag_scheduler.engine.policy import RunPolicy
from flag_scheduler.engine.records import (
    AppliedSchedule,
    DueSchedule,
    FlagState,
    ScheduleOutcome,
)
from flag_scheduler.engine.states import ErrorClass, Outcome, Status
from flag_scheduler.errors import (
    FlagMissing,
    InvalidUpdates,
    PermanentDatabaseError,
    ScheduleExpired,
    ScheduleFailure,
    TransientDatabaseError,
)
from tests.engine.fakes import due_schedule
from tests.support import T0

POLICY = RunPolicy(
    max_retries=3, backoff=BackoffPolicy(jitter_seconds=0), max_lateness_seconds=3600
)
FLAG = UUID("00000000-0000-4000-8000-0000000000f1")
OTHER = UUID("00000000-0000-4000-8000-0000000000f2")
STATE = FlagState(FLAG, "banner", "production", enabled=False, rollout_percentage=0)
OTHER_STATE = FlagState(OTHER, "checkout", "production", enabled=False, rollout_percentage=0)


def _id(n: int) -> UUID:
    return UUID(int=n)


def _decide(
    schedules: list[DueSchedule],
    *,
    applied: Sequence[AppliedSchedule] = (),
    flags: dict[UUID, FlagState] | None = None,
    minutes_late: int = 0,
    policy: RunPolicy = POLICY,
) -> decide.Decision:
    ordered = sorted(schedules, key=decide.batch_order)
    return decide.decide(
        ordered,
        flags={FLAG: STATE, OTHER: OTHER_STATE} if flags is None else flags,
        marks=decide.field_marks(applied),
        now=T0 + timedelta(minutes=minutes_late),
        policy=policy,
    )


def _applied(minutes: int, *fields: str, n: int = 100, flag: UUID = FLAG) -> AppliedSchedule:
    return AppliedSchedule(flag, T0 + timedelta(minutes=minutes), _id(n), fields)


# --- applying and superseding, per field ---


def test_a_due_schedule_sets_its_fields_and_reports_old_and_new() -> None:
    schedule = due_schedule(FLAG, T0, {"enabled": True, "rollout_percentage": 40})
    decision = _decide([schedule])
    (outcome,) = decision.outcomes
    assert (outcome.status, outcome.outcome, outcome.attempt) == (
        Status.APPLIED,
        Outcome.APPLIED,
        1,
    )
    assert outcome.change is not None
    assert outcome.change.old == {"enabled": False, "rollout_percentage": 0}
    assert outcome.change.new == {"enabled": True, "rollout_percentage": 40}
    assert decision.flags == {FLAG: STATE.with_fields({"enabled": True, "rollout_percentage": 40})}


def test_a_field_a_later_applied_change_set_is_left_alone_the_other_is_set() -> None:
    schedule = due_schedule(FLAG, T0, {"enabled": True, "rollout_percentage": 40})
    decision = _decide([schedule], applied=[_applied(5, "enabled")])
    (outcome,) = decision.outcomes
    assert outcome.outcome == Outcome.APPLIED
    assert outcome.change is not None
    assert outcome.change.new == {"rollout_percentage": 40}
    assert decision.flags[FLAG].fields() == {"enabled": False, "rollout_percentage": 40}


def test_a_change_with_every_field_taken_is_superseded_and_writes_nothing() -> None:
    schedule = due_schedule(FLAG, T0, {"enabled": True})
    decision = _decide([schedule], applied=[_applied(5, "enabled", "rollout_percentage")])
    (outcome,) = decision.outcomes
    assert (outcome.status, outcome.outcome, outcome.change) == (
        Status.SUPERSEDED,
        Outcome.SUPERSEDED,
        None,
    )
    assert decision.flags == {}


def test_an_applied_change_scheduled_earlier_takes_nothing() -> None:
    schedule = due_schedule(FLAG, T0, {"enabled": True})
    (outcome,) = _decide([schedule], applied=[_applied(-5, "enabled")]).outcomes
    assert outcome.outcome == Outcome.APPLIED


def test_marks_keep_the_latest_later_applied_change_of_each_field() -> None:
    """Kills the mutant whose marks keep the earliest later-applied change of a field."""
    early, late = _applied(1, "rollout_percentage", n=1), _applied(3, "rollout_percentage", n=2)
    for applied in ([early, late], [late, early]):  # in either order the query returns them
        marks = decide.field_marks(applied)
        assert marks == {FLAG: {"rollout_percentage": (late.scheduled_at, late.id)}}


def test_a_change_between_two_applied_ones_is_superseded_by_the_latest() -> None:
    """Kills the earliest-mark mutant in the decision itself: applied at +1 and +3 min set
    rollout; the change at +2 must not overwrite +3's value, though it is later than +1."""
    before = due_schedule(FLAG, T0 - timedelta(minutes=1), {"enabled": True})
    between = due_schedule(FLAG, T0 + timedelta(minutes=2), {"rollout_percentage": 20})
    applied = [
        _applied(1, "rollout_percentage", n=1),
        _applied(3, "rollout_percentage", n=2),
    ]
    decision = _decide([before, between], applied=applied, minutes_late=5)
    outcomes = {o.schedule.id: o.outcome for o in decision.outcomes}
    assert outcomes == {before.id: Outcome.APPLIED, between.id: Outcome.SUPERSEDED}
    assert decision.flags[FLAG].rollout_percentage == 0  # untouched: +3's value stays


def test_marks_gather_fields_across_changes_per_flag() -> None:
    marks = decide.field_marks(
        [
            _applied(1, "enabled", n=1),
            _applied(2, "rollout_percentage", n=2),
            _applied(4, "enabled", n=3, flag=OTHER),
        ]
    )
    assert set(marks) == {FLAG, OTHER}
    assert set(marks[FLAG]) == {"enabled", "rollout_percentage"}
    assert set(marks[OTHER]) == {"enabled"}


def test_changes_of_one_flag_in_one_group_apply_in_order_and_chain_old_values() -> None:
    first = due_schedule(FLAG, T0 - timedelta(minutes=2), {"rollout_percentage": 10})
    second = due_schedule(FLAG, T0 - timedelta(minutes=1), {"rollout_percentage": 30})
    decision = _decide([second, first])
    changes = [o.change for o in decision.outcomes]
    assert [c.old if c else None for c in changes] == [
        {"rollout_percentage": 0},
        {"rollout_percentage": 10},
    ]
    assert decision.flags[FLAG].rollout_percentage == 30


def test_a_group_change_marks_its_fields_for_the_rest_of_the_group() -> None:
    change = due_schedule(FLAG, T0, {"enabled": True})
    decision = _decide([change])
    assert decision.marks == {FLAG: {"enabled": (change.scheduled_at, change.id)}}


def test_other_flags_are_independent() -> None:
    mine = due_schedule(FLAG, T0, {"enabled": True})
    theirs = due_schedule(OTHER, T0, {"enabled": True})
    decision = _decide([mine, theirs], applied=[_applied(5, "enabled", flag=OTHER)])
    outcomes = {o.schedule.id: o.outcome for o in decision.outcomes}
    assert outcomes == {mine.id: Outcome.APPLIED, theirs.id: Outcome.SUPERSEDED}
    assert set(decision.flags) == {FLAG}


def test_decide_changes_none_of_its_inputs() -> None:
    marks = decide.field_marks([_applied(5, "enabled")])
    flags = {FLAG: STATE}
    frozen_marks = {flag: dict(m) for flag, m in marks.items()}
    decide.decide(
        [due_schedule(FLAG, T0, {"rollout_percentage": 5, "enabled": True})],
        flags=flags,
        marks=marks,
        now=T0,
        policy=POLICY,
    )
    assert marks == frozen_marks
    assert flags == {FLAG: STATE}


# --- ties in scheduled time ---


def test_a_tie_in_scheduled_time_is_broken_by_id_the_same_way_every_time() -> None:
    low = due_schedule(FLAG, T0, {"rollout_percentage": 1}, id=_id(1))
    high = due_schedule(FLAG, T0, {"rollout_percentage": 2}, id=_id(2))
    for order in itertools.permutations([low, high]):
        decision = _decide(list(order))
        assert [o.schedule.id for o in decision.outcomes] == [low.id, high.id]
        assert decision.flags[FLAG].rollout_percentage == 2  # the higher id wins


def test_an_applied_change_at_the_same_time_wins_only_with_a_higher_id() -> None:
    schedule = due_schedule(FLAG, T0, {"enabled": True}, id=_id(50))
    higher = AppliedSchedule(FLAG, T0, _id(51), ("enabled",))
    lower = AppliedSchedule(FLAG, T0, _id(49), ("enabled",))
    assert _decide([schedule], applied=[higher]).outcomes[0].outcome == Outcome.SUPERSEDED
    assert _decide([schedule], applied=[lower]).outcomes[0].outcome == Outcome.APPLIED


def test_batch_order_sorts_by_flag_then_time_then_id() -> None:
    a = due_schedule(_id(2), T0, {"enabled": True}, id=_id(9))
    b = due_schedule(_id(1), T0 + timedelta(seconds=1), {"enabled": True}, id=_id(1))
    c = due_schedule(_id(1), T0, {"enabled": True}, id=_id(8))
    d = due_schedule(_id(1), T0, {"enabled": True}, id=_id(7))
    assert sorted([a, b, c, d], key=decide.batch_order) == [d, c, b, a]
    assert decide.oldest_by_flag([d, c, b, a]) == {_id(1): (T0, _id(7)), _id(2): (T0, _id(9))}


# --- permanent failures decided without the database ---


def test_a_missing_flag_fails_permanently() -> None:
    (outcome,) = _decide([due_schedule(FLAG, T0, {"enabled": True})], flags={}).outcomes
    assert (outcome.outcome, outcome.error_class, outcome.next_retry_at) == (
        Outcome.FAILED_PERMANENTLY,
        ErrorClass.FLAG_MISSING,
        None,
    )


@pytest.mark.parametrize(
    "updates",
    [
        {"colour": "red"},  # unknown key
        {"enabled": "yes"},  # wrong type
        {"rollout_percentage": 101},  # out of range
        {},  # sets nothing
        "[1, 2]",  # not an object
        "{not json",  # undecodable
        "[" * 5000 + "]" * 5000,  # nested deeper than a decoder goes
        None,  # over the size limit: not even fetched
    ],
)
def test_invalid_updates_fail_at_once_even_with_retries_left(
    updates: dict[str, object] | str | None,
) -> None:
    schedule = due_schedule(FLAG, T0, updates)
    (outcome,) = _decide([schedule]).outcomes
    assert (outcome.outcome, outcome.error_class, outcome.retry_count) == (
        Outcome.FAILED_PERMANENTLY,
        ErrorClass.INVALID_UPDATES,
        None,
    )


def test_a_failure_never_changes_the_flag() -> None:
    bad = due_schedule(FLAG, T0, {"colour": "red"})
    decision = _decide([bad])
    assert decision.flags == {}
    assert not decision.took_effect


# --- expiry ---


@pytest.mark.parametrize(
    ("minutes_late", "outcome"),
    [
        (59, Outcome.APPLIED),
        (60, Outcome.APPLIED),  # exactly at the limit is still in time
        (61, Outcome.EXPIRED),
    ],
)
def test_the_lateness_limit(minutes_late: int, outcome: Outcome) -> None:
    schedule = due_schedule(FLAG, T0, {"enabled": True})
    (decided,) = _decide([schedule], minutes_late=minutes_late).outcomes
    assert decided.outcome == outcome


def test_an_expired_change_fails_for_good_with_its_class() -> None:
    schedule = due_schedule(FLAG, T0, {"enabled": True}, retry_count=1)
    (outcome,) = _decide([schedule], minutes_late=120).outcomes
    assert (outcome.status, outcome.error_class, outcome.attempt, outcome.next_retry_at) == (
        Status.FAILED,
        ErrorClass.EXPIRED,
        2,
        None,
    )
    assert outcome.error is not None
    assert "not applied within 3600 s" in outcome.error


def test_a_requeued_schedule_counts_lateness_from_its_requeue() -> None:
    requeued = T0 + timedelta(minutes=100)
    schedule = due_schedule(FLAG, T0, {"enabled": True}, requeued_at=requeued)
    (outcome,) = _decide([schedule], minutes_late=120).outcomes
    assert outcome.outcome == Outcome.APPLIED


def test_a_lateness_limit_of_zero_never_expires() -> None:
    schedule = due_schedule(FLAG, T0, {"enabled": True})
    policy = RunPolicy(max_lateness_seconds=0)
    (outcome,) = _decide([schedule], minutes_late=10_000_000, policy=policy).outcomes
    assert outcome.outcome == Outcome.APPLIED


def test_a_late_change_with_nothing_left_to_set_is_superseded_not_expired() -> None:
    schedule = due_schedule(FLAG, T0, {"enabled": True})
    (outcome,) = _decide([schedule], applied=[_applied(5, "enabled")], minutes_late=600).outcomes
    assert outcome.outcome == Outcome.SUPERSEDED


# --- failures the database reported: retry or give up ---


def _fail(schedule: DueSchedule, failure: ScheduleFailure) -> ScheduleOutcome:
    return decide.failure_outcome(schedule, failure, failed_at=T0, policy=POLICY)


def test_a_retryable_failure_with_retries_left_schedules_the_backoff() -> None:
    schedule = due_schedule(FLAG, T0, {"enabled": True}, retry_count=1)
    outcome = _fail(schedule, TransientDatabaseError("deadlock", error_class=ErrorClass.DEADLOCK))
    assert (outcome.status, outcome.outcome, outcome.attempt, outcome.retry_count) == (
        Status.FAILED,
        Outcome.RETRY_SCHEDULED,
        2,
        2,
    )
    assert outcome.next_retry_at == T0 + retry_delay(POLICY.backoff, 1, schedule.id)
    assert outcome.next_retry_at == T0 + timedelta(minutes=4)
    assert outcome.last_error == "deadlock: deadlock"


def test_the_failure_that_finds_no_retry_left_is_permanent() -> None:
    schedule = due_schedule(FLAG, T0, {"enabled": True}, retry_count=3)  # 4th attempt
    outcome = _fail(schedule, TransientDatabaseError("x", error_class=ErrorClass.LOCK_TIMEOUT))
    assert (outcome.outcome, outcome.attempt, outcome.next_retry_at, outcome.max_retries) == (
        Outcome.FAILED_PERMANENTLY,
        4,
        None,
        3,
    )


@pytest.mark.parametrize(
    ("own_limit", "retry_count", "outcome"),
    [
        (0, 0, Outcome.FAILED_PERMANENTLY),  # the schedule's 0 beats the policy's 3
        (5, 3, Outcome.RETRY_SCHEDULED),  # its 5 gives more than the policy's 3
        (5, 5, Outcome.FAILED_PERMANENTLY),
        (None, 2, Outcome.RETRY_SCHEDULED),  # no own limit: the policy's 3
    ],
)
def test_a_schedules_own_max_retries_overrides_the_policy(
    own_limit: int | None, retry_count: int, outcome: Outcome
) -> None:
    schedule = due_schedule(
        FLAG, T0, {"enabled": True}, max_retries=own_limit, retry_count=retry_count
    )
    decided = _fail(schedule, TransientDatabaseError("x"))
    assert decided.outcome == outcome
    assert decided.max_retries == (own_limit if own_limit is not None else 3)


@pytest.mark.parametrize(
    "failure",
    [
        PermanentDatabaseError("bad", error_class=ErrorClass.INTEGRITY_ERROR),
        InvalidUpdates("bad"),
        FlagMissing("gone"),
    ],
)
def test_a_permanent_failure_is_final_with_retries_left(failure: ScheduleFailure) -> None:
    schedule = due_schedule(FLAG, T0, {"enabled": True})
    outcome = _fail(schedule, failure)
    assert (outcome.outcome, outcome.next_retry_at) == (Outcome.FAILED_PERMANENTLY, None)


def test_an_expiry_is_reported_as_expired_not_failed() -> None:
    outcome = _fail(due_schedule(FLAG, T0, {"enabled": True}), ScheduleExpired("late"))
    assert (outcome.outcome, outcome.error_class) == (Outcome.EXPIRED, ErrorClass.EXPIRED)


def test_a_long_driver_message_is_cut_for_people() -> None:
    outcome = _fail(due_schedule(FLAG, T0, {"enabled": True}), TransientDatabaseError("x" * 5000))
    assert outcome.error == "x" * MAX_ERROR_LENGTH


def test_a_retry_is_timed_from_the_moment_of_failure() -> None:
    schedule = due_schedule(uuid4(), T0, {"enabled": True})
    later = T0 + timedelta(minutes=7)
    outcome = decide.failure_outcome(
        schedule, TransientDatabaseError("x"), failed_at=later, policy=POLICY
    )
    assert outcome.next_retry_at == later + timedelta(minutes=2)
