"""The policy preview's jitter windows, computed from the engine's retry timeline (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flag_scheduler.engine.backoff import BackoffPolicy
from flag_scheduler.engine.limits import END_OF_TIME
from flag_scheduler_cli import commands


def _preview(policy: BackoffPolicy, max_retries: int, start: datetime) -> dict[str, Any]:
    data: dict[str, Any] = commands.policy_preview(policy, max_retries, start).data
    return data


def test_each_attempt_is_a_window_one_jitter_wider_per_retry() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    data = _preview(BackoffPolicy(60, 180, 10), 4, start)
    minutes = [0, 1, 3, 6, 9]  # 60, 120, then capped at 180 s
    assert [a["earliest"] for a in data["attempts"]] == [
        start + timedelta(minutes=m) for m in minutes
    ]
    assert [a["latest"] - a["earliest"] for a in data["attempts"]] == [
        timedelta(seconds=10 * k) for k in range(5)
    ]
    assert data["permanently_failed_between"] == [
        start + timedelta(minutes=9),
        start + timedelta(minutes=9, seconds=40),
    ]
    assert data["cut_short_at_attempt"] is None


def test_an_attempt_whose_jitter_window_reaches_the_end_of_time_is_cut() -> None:
    # The third attempt's earliest moment is before the end of time, its latest is not.
    start = END_OF_TIME - timedelta(seconds=250)
    data = _preview(BackoffPolicy(100, 100, 30), 5, start)
    assert [a["attempt"] for a in data["attempts"]] == [1, 2]
    assert data["cut_short_at_attempt"] == 3
    assert data["permanently_failed_between"] is None
