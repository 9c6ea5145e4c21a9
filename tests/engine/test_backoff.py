"""The backoff calculator: exact examples and properties."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flag_scheduler.engine.backoff import (
    BackoffPolicy,
    jitter_fraction,
    retry_delay,
    retry_timeline,
)
from tests.support import T0

NO_JITTER = BackoffPolicy(base_seconds=120, cap_seconds=3600, jitter_seconds=0)
SCHEDULE = UUID("00000000-0000-4000-8000-000000000001")


@pytest.mark.parametrize(
    ("retry_number", "minutes"),
    [
        (0, 2),  # first retry: the base
        (1, 4),  # doubles
        (2, 8),
        (4, 32),
        (5, 60),  # 64 min is capped at 60
        (9, 60),
    ],
)
def test_delays_double_from_two_minutes_up_to_the_cap(retry_number: int, minutes: int) -> None:
    assert retry_delay(NO_JITTER, retry_number, SCHEDULE) == timedelta(minutes=minutes)


def test_jitter_stays_within_its_bound_and_is_reproducible() -> None:
    policy = BackoffPolicy()  # 120 s base, 30 s jitter
    delays = [retry_delay(policy, 0, uuid4()) for _ in range(200)]
    assert all(timedelta(seconds=120) <= d <= timedelta(seconds=150) for d in delays)
    assert len(set(delays)) > 150  # spread out, not one value
    assert retry_delay(policy, 0, SCHEDULE) == retry_delay(policy, 0, SCHEDULE)


@pytest.mark.parametrize("retry_number", [0, 9])  # below the cap, and at it
def test_jitter_spreads_retries_over_its_whole_window(retry_number: int) -> None:
    """Kills the mutant that shrinks the jitter to part of its window (e.g. half of it)."""
    policy = BackoffPolicy(base_seconds=120, cap_seconds=3600, jitter_seconds=30)
    backoff = min(120 * 2**retry_number, 3600)
    jitters = [
        (retry_delay(policy, retry_number, UUID(int=i)) - timedelta(seconds=backoff))
        / timedelta(seconds=30)
        for i in range(1000)
    ]
    # Every tenth of the window is reached, its bottom and its top included: a bound alone
    # would pass a jitter squeezed into any part of it.
    tenths = {int(fraction * 10) for fraction in jitters}
    assert tenths == set(range(10)), sorted(tenths)
    assert min(jitters) < 0.01, min(jitters)
    assert max(jitters) > 0.99, max(jitters)


def test_jitter_differs_between_retries_of_one_schedule() -> None:
    assert jitter_fraction(SCHEDULE, 0) != jitter_fraction(SCHEDULE, 1)


def test_jitter_is_uniform_across_schedules() -> None:
    fractions = [jitter_fraction(uuid4(), 0) for _ in range(4000)]
    counts = [0] * 4
    for f in fractions:
        counts[int(f * 4)] += 1
    # Each quarter gets 1000 ± a generous 15 %.
    assert all(850 < c < 1150 for c in counts), counts


def test_a_huge_retry_number_is_capped_without_overflow() -> None:
    policy = BackoffPolicy(jitter_seconds=30)
    delay = retry_delay(policy, 10_000, SCHEDULE)
    assert timedelta(seconds=3600) <= delay <= timedelta(seconds=3630)


def test_zero_jitter_gives_the_exact_backoff() -> None:
    assert retry_delay(NO_JITTER, 3, uuid4()) == timedelta(minutes=16)


def test_negative_retry_number_is_refused() -> None:
    with pytest.raises(ValueError, match="retry_number must be >= 0"):
        retry_delay(NO_JITTER, -1, SCHEDULE)


def test_timeline_lists_every_attempt_until_the_permanent_failure() -> None:
    timeline = retry_timeline(NO_JITTER, SCHEDULE, T0, max_retries=3)
    assert [a.attempt for a in timeline] == [1, 2, 3, 4]
    assert [a.at - T0 for a in timeline] == [
        timedelta(0),
        timedelta(minutes=2),
        timedelta(minutes=6),
        timedelta(minutes=14),
    ]
    assert timeline[0].delay_before is None


def test_timeline_with_no_retries_is_one_attempt() -> None:
    assert len(retry_timeline(BackoffPolicy(), SCHEDULE, T0, max_retries=0)) == 1


def test_timeline_uses_the_same_jitter_as_the_engine() -> None:
    policy = BackoffPolicy()
    timeline = retry_timeline(policy, SCHEDULE, T0, max_retries=2)
    assert timeline[1].at == T0 + retry_delay(policy, 0, SCHEDULE)
    assert timeline[2].at == timeline[1].at + retry_delay(policy, 1, SCHEDULE)


policies = st.builds(
    BackoffPolicy,
    base_seconds=st.integers(1, 86_400),
    cap_seconds=st.integers(1, 604_800),
    jitter_seconds=st.integers(0, 3_600),
).filter(lambda p: p.cap_seconds >= p.base_seconds)


@given(policy=policies, n=st.integers(0, 1_000), schedule=st.uuids())
def test_delay_is_between_the_capped_backoff_and_cap_plus_jitter(
    policy: BackoffPolicy, n: int, schedule: UUID
) -> None:
    delay = retry_delay(policy, n, schedule).total_seconds()
    floor = min(policy.cap_seconds, policy.base_seconds * 2 ** min(n, 62))
    assert floor - 1e-6 <= delay <= policy.cap_seconds + policy.jitter_seconds + 1e-6
    assert delay <= floor + policy.jitter_seconds + 1e-6


@given(policy=policies, n=st.integers(0, 200), schedule=st.uuids())
def test_without_jitter_delays_never_decrease(
    policy: BackoffPolicy, n: int, schedule: UUID
) -> None:
    flat = BackoffPolicy(policy.base_seconds, policy.cap_seconds, 0)
    assert retry_delay(flat, n, schedule) <= retry_delay(flat, n + 1, schedule)


@given(schedule=st.uuids(), n=st.integers(0, 10_000))
def test_jitter_fraction_is_in_the_unit_interval(schedule: UUID, n: int) -> None:
    assert 0.0 <= jitter_fraction(schedule, n) < 1.0


def test_timeline_of_a_schedule_already_retried_continues_its_numbering() -> None:
    policy = BackoffPolicy()
    next_retry_at = T0 + timedelta(minutes=5)
    timeline = retry_timeline(policy, SCHEDULE, next_retry_at, max_retries=3, attempts_made=2)
    assert [a.attempt for a in timeline] == [3, 4]
    assert timeline[0].at == next_retry_at
    assert timeline[1].at == next_retry_at + retry_delay(policy, 2, SCHEDULE)


def test_a_timeline_stops_before_the_end_of_representable_time() -> None:
    """Attempts at or after `until` are left out; the ones before it are kept whole."""
    policy = BackoffPolicy(base_seconds=3600, cap_seconds=3600, jitter_seconds=0)
    until = T0 + timedelta(hours=2, minutes=30)
    timeline = retry_timeline(policy, uuid4(), T0, 10, until=until)
    assert [attempt.at for attempt in timeline] == [
        T0,
        T0 + timedelta(hours=1),
        T0 + timedelta(hours=2),
    ]
    # Exactly at `until` is cut too (the end of time is exclusive).
    exact = retry_timeline(policy, uuid4(), T0, 10, until=T0 + timedelta(hours=2))
    assert [attempt.attempt for attempt in exact] == [1, 2]


def test_a_text_key_jitters_as_the_uuid_it_spells() -> None:
    """Outbox messages key their jitter by their id (text); a schedule's stays as it was."""
    policy = BackoffPolicy(jitter_seconds=30)
    assert retry_delay(policy, 2, str(SCHEDULE)) == retry_delay(policy, 2, SCHEDULE)
    assert retry_delay(policy, 0, "alert:a:1") != retry_delay(policy, 0, "alert:a:2")
