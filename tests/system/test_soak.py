"""Load: many due schedules, random retryable faults and bad inputs, drained by 4 concurrent
handler processes; every schedule ends exactly once in the state the contract promises."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from flag_scheduler.engine.backoff import BackoffPolicy, retry_delay
from flag_scheduler_cli import fault_injection
from tests.system import audit, invariants

KINDS = ("40001", "40P01", "55P03", "57014")
CLASSES = {
    "40001": "serialization_failure",
    "40P01": "deadlock",
    "55P03": "lock_timeout",
    "57014": "statement_timeout",
}
FAULT_RATE = 0.05
BAD_SHARE = 0.01
MAX_RETRIES = 10  # 11 faults in a row on one schedule: 0.05**11, never
INVOKERS = 4
# Kept at its default: faults drawn independently, of four kinds, at 5 % almost never make
# five failures in a row of one kind on five flags; when they do, or real lock waits between
# the invokers do, the run stops as an outage, which the drain counts and carries on from.
OUTAGE_THRESHOLD = "5"
BAD_UPDATES: list[Any] = [
    {},
    {"colour": "red"},
    {"enabled": "yes"},
    {"rollout_percentage": 101},
    {"rollout_percentage": 12.5},
    {"enabled": None},
    [True],
    {"enabled": True, "padding": "x" * 5000},
]


def _seed(conn: psycopg.Connection[Any], *, schedules: int, flags: int, seed: int) -> int:
    """Insert flags and due schedules (some invalid); returns how many are invalid."""
    rng = random.Random(seed)
    flag_ids = [
        row[0]
        for row in conn.execute(
            "INSERT INTO feature_flags (flag_key) SELECT 'soak-' || g"
            " FROM generate_series(1, %s) AS g RETURNING id",
            (flags,),
        )
    ]
    now = datetime.now(UTC)
    bad = 0
    with (
        conn.cursor() as cursor,
        cursor.copy(
            "COPY feature_flag_schedules (flag_id, scheduled_at, updates) FROM STDIN"
        ) as copy,
    ):
        for _ in range(schedules):
            if rng.random() < BAD_SHARE:
                updates: Any = rng.choice(BAD_UPDATES)
                bad += 1
            else:
                updates = rng.choice(
                    [
                        {"enabled": rng.random() < 0.5},
                        {"rollout_percentage": rng.randint(0, 100)},
                        {"enabled": rng.random() < 0.5, "rollout_percentage": rng.randint(0, 100)},
                    ]
                )
            at = now - timedelta(
                seconds=rng.randint(1, 3600), microseconds=rng.randint(0, 10**6 - 1)
            )
            copy.write_row((rng.choice(flag_ids), at, json.dumps(updates)))
    conn.execute("ANALYZE feature_flag_schedules")
    return bad


def _invoke_all(database_url: str) -> tuple[list[dict[str, Any]], int]:
    """One round: 4 handler processes at once; their summaries and how many stopped as an
    outage (the only failure allowed)."""
    env = audit.invoke_env(
        database_url,
        FLAG_SCHEDULE_MAX_RETRIES=str(MAX_RETRIES),
        FLAG_SCHEDULE_BATCH_SIZE="200",
        FLAG_SCHEDULE_OUTAGE_THRESHOLD=OUTAGE_THRESHOLD,
    )
    command = [sys.executable, "-m", "flag_scheduler_cli.cli", "invoke", "--timeout", "900"]
    # Files, not pipes: a process whose unread pipe fills up would stall until its turn.
    with ExitStack() as files:
        outputs = [
            (
                files.enter_context(tempfile.TemporaryFile("w+")),
                files.enter_context(tempfile.TemporaryFile("w+")),
            )
            for _ in range(INVOKERS)
        ]
        processes = [
            subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)
            for out, err in outputs
        ]
        summaries, outages = [], 0
        for process, (out, err) in zip(processes, outputs, strict=True):
            process.wait(timeout=1800)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
            if process.returncode == 0:
                summaries.append(json.loads(stdout[stdout.index("{") :]))
            else:
                assert "run_aborted_systemic" in stderr, stderr[-3000:]
                outages += 1
    return summaries, outages


def _check_retry_windows(conn: psycopg.Connection[Any]) -> int:
    """Every schedule waiting for a retry waits exactly its backoff from its failure."""
    policy = BackoffPolicy()
    rows = conn.execute(
        "SELECT s.id, s.retry_count, s.next_retry_at, a.started_at, a.finished_at"
        " FROM feature_flag_schedules AS s"
        " JOIN LATERAL (SELECT started_at, finished_at FROM feature_flag_schedule_attempts"
        "   WHERE schedule_id = s.id ORDER BY id DESC LIMIT 1) AS a ON true"
        " WHERE s.status = 'failed' AND s.next_retry_at IS NOT NULL"
    ).fetchall()
    for schedule_id, retry_count, next_retry_at, started_at, finished_at in rows:
        failed_at = next_retry_at - retry_delay(policy, retry_count - 1, schedule_id)
        assert started_at <= failed_at <= finished_at + timedelta(seconds=1), schedule_id
    return len(rows)


def _drain(conn: psycopg.Connection[Any], database_url: str) -> Counter[str]:
    """Invoke rounds until nothing is due or waiting; between rounds the retries' wait is
    skipped (next_retry_at moved to now) once their windows are checked."""
    totals: Counter[str] = Counter()
    for _ in range(40):
        summaries, outages = _invoke_all(database_url)
        totals["rounds"] += 1
        totals["outage stops"] += outages
        totals["claimed"] += sum(s["claimed"] for s in summaries)
        waiting = _check_retry_windows(conn)
        due = conn.execute(
            "SELECT count(*) FROM feature_flag_schedules WHERE due_at <= now()"
        ).fetchone()
        if not waiting and due == (0,):
            return totals
        conn.execute(
            "UPDATE feature_flag_schedules SET next_retry_at = now()"
            " WHERE status = 'failed' AND next_retry_at IS NOT NULL"
        )
    raise AssertionError(f"not drained after 40 rounds: {totals}")


def soak(conn: psycopg.Connection[Any], database_url: str, *, schedules: int, flags: int) -> str:
    """Seed, drain under random faults, check everything; returns the report line."""
    started = time.monotonic()
    bad = _seed(conn, schedules=schedules, flags=flags, seed=schedules)
    invariants.install_audit(conn)
    fault_injection.set_random_faults(conn, rate=FAULT_RATE, sqlstates=KINDS, seed=schedules)

    totals = _drain(conn, database_url)

    found = invariants.inspect(conn, now=datetime.now(UTC), max_retries=MAX_RETRIES)
    # Each injected fault is exactly the attempt the hash picked, recorded as its retry.
    draws = fault_injection.random_draws(conn)
    injected: Counter[str] = Counter()
    natural: Counter[str] = Counter()
    for schedule_id, attempt, outcome, error_class, error in conn.execute(
        "SELECT schedule_id, attempt, outcome, error_class, error"
        " FROM feature_flag_schedule_attempts WHERE attempt IS NOT NULL"
    ):
        drawn = draws[(schedule_id, attempt)]
        if outcome == "applied":
            assert drawn is None, (schedule_id, attempt, drawn)
        elif outcome == "retry_scheduled" and (error or "").startswith("injected"):
            assert drawn is not None, (schedule_id, attempt)
            assert error_class == CLASSES[drawn], (schedule_id, attempt, error_class, drawn)
            injected[drawn] += 1
        elif outcome == "retry_scheduled":
            natural[error_class] += 1  # real contention between the invokers
    lost = _lost(conn, schedules)
    twice = len(found.applied_twice)
    stuck = len(found.stuck) + _open(conn)
    assert found.history == [], found.history[:5]
    assert found.flag_state == [], found.flag_state[:5]
    assert found.retry_limits == [], found.retry_limits[:5]
    kinds = ", ".join(f"{kind}: {injected[kind]}" for kind in KINDS)
    report = (
        f"{schedules} schedules, {sum(injected.values())} faults injected ({kinds}),"
        f" {bad} bad inputs, {lost} lost, {twice} applied twice, {stuck} stuck"
    )
    extra = (
        f"  [{totals['rounds']} rounds of {INVOKERS} invokers, {totals['outage stops']} outage"
        f" stops, natural retries {dict(natural)}, statuses {dict(found.statuses)},"
        f" {time.monotonic() - started:.0f} s]"
    )
    failed = found.statuses["failed"]
    assert failed == bad, f"{failed} failed for {bad} bad inputs"
    assert all(injected[kind] for kind in KINDS), report
    return report + "\n" + extra


def _lost(conn: psycopg.Connection[Any], expected: int) -> int:
    """Schedules missing, or valid ones not applied or superseded, or invalid ones not
    failed as invalid_updates with a clear message."""
    rows = conn.execute(
        "SELECT status, next_retry_at, last_error_class, last_error, retry_count"
        " FROM feature_flag_schedules"
    ).fetchall()
    lost = expected - len(rows)
    for status, next_retry_at, error_class, last_error, retry_count in rows:
        if status in ("applied", "superseded"):
            continue
        invalid = (
            status == "failed"
            and next_retry_at is None
            and error_class == "invalid_updates"
            and (last_error or "").startswith("invalid_updates: ")
            and retry_count == 0
        )
        lost += not invalid
    return lost


def _open(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM feature_flag_schedules"
        " WHERE status = 'pending' OR (status = 'failed' AND next_retry_at IS NOT NULL)"
    ).fetchone()
    assert row is not None
    return int(row[0])


def _run_and_report(
    conn: psycopg.Connection[Any],
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    **size: int,
) -> None:
    report = soak(conn, database_url, **size)
    with capsys.disabled():
        print(f"\nsoak: {report}")
    assert report.splitlines()[0].endswith("0 lost, 0 applied twice, 0 stuck"), report


@pytest.mark.slow
def test_a_soak_of_10_000_schedules_under_random_faults(
    database_url: str, conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _run_and_report(conn, database_url, capsys, schedules=10_000, flags=200)


@pytest.mark.soak
def test_a_soak_of_100_000_schedules_under_random_faults(
    database_url: str, conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _run_and_report(conn, database_url, capsys, schedules=100_000, flags=2_000)
