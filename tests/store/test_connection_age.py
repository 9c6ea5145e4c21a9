"""A warm container's cached connection is replaced once it reaches its maximum age."""

from __future__ import annotations

import pytest

from flag_scheduler.aws import scheduler
from flag_scheduler_cli.local import FakeLambdaContext
from tests.support import backend_pid


class Monotonic:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


def _run_and_pid(clock: Monotonic) -> int:
    """Run the handler once; the server process of the connection it keeps."""
    scheduler.run_invocation(FakeLambdaContext(), monotonic=clock)
    return backend_pid(scheduler._container.connection)


def test_a_connection_is_reused_until_its_max_age_then_replaced(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("FLAG_SCHEDULE_CONNECTION_MAX_AGE_SECONDS", "900")
    clock = Monotonic()

    first = _run_and_pid(clock)
    old_connection = scheduler._container.connection
    clock.now += 899  # younger than the limit: the same session
    assert _run_and_pid(clock) == first
    clock.now += 1  # 900 s old: a new session, the old one closed
    second = _run_and_pid(clock)
    assert second != first
    assert old_connection is not None
    assert old_connection.closed
    clock.now += 899  # the age counts from the new connection, not the first
    assert _run_and_pid(clock) == second


def test_max_age_zero_opens_a_connection_every_invocation(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("FLAG_SCHEDULE_CONNECTION_MAX_AGE_SECONDS", "0")
    clock = Monotonic()
    assert _run_and_pid(clock) != _run_and_pid(clock)
