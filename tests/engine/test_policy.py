"""The retry limit and the lateness rule, written once for the engine and the CLI."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flag_scheduler.engine import policy
from tests.support import T0


@pytest.mark.parametrize(
    ("own", "default", "limit"),
    [
        (None, 3, 3),  # no limit of its own: FLAG_SCHEDULE_MAX_RETRIES
        (0, 3, 0),  # its own 0 is a limit, not "unset"
        (7, 3, 7),
    ],
)
def test_a_schedules_own_retry_limit_wins_over_the_default(
    own: int | None, default: int, limit: int
) -> None:
    assert policy.retry_limit(own, default=default) == limit


@pytest.mark.parametrize(
    ("late_by", "too_late"),
    [
        (timedelta(seconds=59), False),
        (timedelta(seconds=60), False),  # exactly at the limit is still in time
        (timedelta(seconds=60, microseconds=1), True),
        (-timedelta(days=1), False),  # not due yet
    ],
)
def test_too_late_is_strictly_past_the_limit(late_by: timedelta, too_late: bool) -> None:
    assert policy.is_too_late(T0, now=T0 + late_by, max_lateness_seconds=60) is too_late


def test_a_limit_of_zero_is_no_limit() -> None:
    assert not policy.is_too_late(T0, now=T0 + timedelta(days=3650), max_lateness_seconds=0)
    assert policy.expires_at(T0, max_lateness_seconds=0) is None


def test_the_window_opens_at_the_requeue_when_there_is_one() -> None:
    requeued = T0 + timedelta(hours=5)
    assert policy.due_since(T0, requeued) == requeued
    assert policy.due_since(T0, None) == T0
    assert policy.expires_at(requeued, max_lateness_seconds=60) == requeued + timedelta(minutes=1)


def test_the_last_moment_in_time_is_not_too_late() -> None:
    """expires_at and is_too_late agree: the moment expires_at names still applies."""
    last = policy.expires_at(T0, max_lateness_seconds=3600)
    assert last is not None
    assert not policy.is_too_late(T0, now=last, max_lateness_seconds=3600)
    assert policy.is_too_late(T0, now=last + timedelta(microseconds=1), max_lateness_seconds=3600)
