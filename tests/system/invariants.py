"""Whole-database checks after a fault: nothing lost, nothing applied twice, nothing stuck,
history consistent, and every flag field holding the latest-scheduled applied value."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from tests.system import audit

FINAL = {"applied", "superseded", "cancelled"}
FIELDS = ("enabled", "rollout_percentage")


def install_audit(conn: psycopg.Connection[Any]) -> None:
    """Record every application and flag write, so a double application cannot hide."""
    conn.execute(audit.INSTALL_AUDIT)


@dataclass
class Findings:
    """What a check found; every list is empty in a healthy database."""

    statuses: Counter[str] = field(default_factory=Counter)
    stuck: list[UUID] = field(default_factory=list)
    applied_twice: list[UUID] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    flag_state: list[str] = field(default_factory=list)
    retry_limits: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return [
            *(f"stuck (due but not drained): {s}" for s in self.stuck[:5]),
            *(f"applied twice: {s}" for s in self.applied_twice[:5]),
            *self.history[:5],
            *self.flag_state[:5],
            *self.retry_limits[:5],
        ]


def _latest_wins(rows: list[tuple[Any, ...]]) -> dict[tuple[UUID, str], object]:
    """Per (flag, field): the value of the latest-scheduled applied schedule that sets it.

    Ties in scheduled_at go to the larger schedule id, the order the scheduler uses.
    """
    latest: dict[tuple[UUID, str], tuple[datetime, UUID]] = {}
    expected: dict[tuple[UUID, str], object] = {}
    for schedule_id, flag_id, scheduled_at, status, updates in rows:
        if status != "applied" or not isinstance(updates, dict):
            continue
        for name in FIELDS:
            if name in updates:
                key, order = (flag_id, name), (scheduled_at, schedule_id)
                if key not in latest or order > latest[key]:
                    latest[key], expected[key] = order, updates[name]
    return expected


def inspect(
    conn: psycopg.Connection[Any],
    *,
    now: datetime,
    max_retries: int,
    audited: bool = True,
    initial: dict[UUID, dict[str, object]] | None = None,
) -> Findings:
    """Check every schedule, its history and every flag; `now` is when the drain ended."""
    found = Findings()
    schedules = conn.execute(
        "SELECT id, flag_id, scheduled_at, status, updates, retry_count,"
        " coalesce(max_retries, %s), next_retry_at, due_at <= %s"
        " FROM feature_flag_schedules",
        (max_retries, now),
    ).fetchall()
    history: dict[UUID, list[tuple[Any, ...]]] = defaultdict(list)
    for schedule_id, attempt, outcome in conn.execute(
        "SELECT schedule_id, attempt, outcome FROM feature_flag_schedule_attempts ORDER BY id"
    ):
        history[schedule_id].append((attempt, outcome))

    for sid, _, _, status, _, retry_count, limit, next_retry_at, due in schedules:
        found.statuses[status] += 1
        if due:
            found.stuck.append(sid)
        if retry_count > limit:
            found.retry_limits.append(f"{sid}: retry_count {retry_count} > limit {limit}")
        found.history.extend(_history_problems(sid, status, retry_count, next_retry_at, history))

    if audited:
        duplicates = conn.execute(
            "SELECT schedule_id FROM schedule_applications GROUP BY 1 HAVING count(*) > 1"
        ).fetchall()
        found.applied_twice = [row[0] for row in duplicates]
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM schedule_applications),"
            " (SELECT count(*) FROM flag_writes)"
        ).fetchone()
        assert counts is not None
        # One flag write may carry several applied schedules of a flag, never none.
        applied = found.statuses["applied"]
        if counts[0] != applied or counts[1] > applied or (applied and not counts[1]):
            found.flag_state.append(
                f"{counts[0]} applications and {counts[1]} flag writes recorded for"
                f" {applied} applied schedules"
            )

    expected = _latest_wins([row[:5] for row in schedules])
    for flag_id, enabled, rollout in conn.execute(
        "SELECT id, enabled, rollout_percentage FROM feature_flags"
    ):
        actual = {"enabled": enabled, "rollout_percentage": rollout}
        for name in FIELDS:
            want = expected.get((flag_id, name), (initial or {}).get(flag_id, {}).get(name))
            if want is not None and actual[name] != want:
                found.flag_state.append(f"flag {flag_id} {name}: {actual[name]!r} != {want!r}")
    return found


def _history_problems(
    sid: UUID,
    status: str,
    retry_count: int,
    next_retry_at: datetime | None,
    history: dict[UUID, list[tuple[Any, ...]]],
) -> list[str]:
    """The schedule's history since its last manual requeue must tell its state's story."""
    rows = history.get(sid, [])
    requeues = [i for i, (_, outcome) in enumerate(rows) if outcome == "requeued"]
    since = rows[requeues[-1] + 1 :] if requeues else rows
    attempts = [(a, o) for a, o in since if a is not None]
    problems = []
    numbers = [a for a, _ in attempts]
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append(f"{sid}: attempt numbers {numbers}")
    retries = sum(1 for _, o in attempts if o == "retry_scheduled")
    last = attempts[-1][1] if attempts else None
    if any(o != "retry_scheduled" for _, o in attempts[:-1]):
        problems.append(f"{sid}: an attempt after a final outcome: {attempts}")
    expected_last = {
        "applied": {"applied"},
        "superseded": {"superseded"},
        "pending": {None},
        "cancelled": {None, "retry_scheduled"},
    }.get(status)
    if status == "failed":
        expected_last = {"retry_scheduled"} if next_retry_at else {"failed_permanently", "expired"}
    if expected_last is not None and last not in expected_last:
        problems.append(f"{sid}: {status} but last attempt outcome is {last}")
    # A failure that makes the schedule permanent keeps the count of the retries before it.
    if status != "pending" and retries != retry_count:
        problems.append(f"{sid}: retry_count {retry_count} but {retries} retry_scheduled rows")
    return problems


def assert_consistent(
    conn: psycopg.Connection[Any],
    *,
    now: datetime,
    max_retries: int = 3,
    audited: bool = True,
    initial: dict[UUID, dict[str, object]] | None = None,
) -> Counter[str]:
    """Assert the healthy-database invariants after a drain; returns the status counts."""
    found = inspect(conn, now=now, max_retries=max_retries, audited=audited, initial=initial)
    assert found.problems() == [], found.problems()
    return found.statuses
