"""Whole handler processes at once, and one killed with SIGKILL mid-batch."""

from __future__ import annotations

import json
import random
import signal
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from flag_scheduler.store.catalog import Catalog
from tests.system import audit

pytestmark = pytest.mark.slow


def _seed(catalog: Catalog, *, flags: int, schedules: int, seed: int) -> None:
    rng = random.Random(seed)
    flag_ids = [catalog.create_flag(f"flag-{i:04d}") for i in range(flags)]
    now = datetime.now(UTC)
    for _ in range(schedules):
        updates: dict[str, object] = {}
        while not updates:
            if rng.random() < 0.6:
                updates["enabled"] = rng.random() < 0.5
            if rng.random() < 0.6:
                updates["rollout_percentage"] = rng.randint(0, 100)
        scheduled_at = now - timedelta(
            seconds=rng.randint(1, 3600), microseconds=rng.randint(0, 999_999)
        )
        catalog.create_schedule(rng.choice(flag_ids), scheduled_at, updates)


def test_four_concurrent_invocations_apply_every_schedule_exactly_once(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    _seed(catalog, flags=200, schedules=2000, seed=4)
    audit.install(conn, write_delay_seconds=0.002)

    invokers = [audit.start_invoker(database_url, FLAG_SCHEDULE_BATCH_SIZE="25") for _ in range(4)]
    results = []
    for process in invokers:
        stdout, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr
        results.append(json.loads(stdout[stdout.index("{\n") :]))

    statuses = audit.check_exactly_once(conn)
    assert sum(statuses.values()) == 2000
    assert sum(r["claimed"] for r in results) == 2000  # nobody claimed what another did
    assert sum(r["applied"] for r in results) == statuses["applied"]
    assert sum(1 for r in results if r["claimed"] > 0) >= 2, results  # they really overlapped


def test_a_process_killed_mid_batch_loses_nothing_and_applies_nothing_twice(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    _seed(catalog, flags=300, schedules=3000, seed=9)
    audit.install(conn, write_delay_seconds=0.002)

    victim = audit.start_invoker(database_url, FLAG_SCHEDULE_BATCH_SIZE="200")
    deadline = time.monotonic() + 60
    applied = 0
    while applied == 0:  # let at least one batch commit, then kill inside a later one
        assert time.monotonic() < deadline, "the invoker never committed a batch"
        assert victim.poll() is None, victim.communicate()
        time.sleep(0.05)
        row = conn.execute("SELECT count(*) FROM schedule_applications").fetchone()
        applied = row[0] if row else 0
    time.sleep(0.15)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=10)
    assert victim.returncode == -signal.SIGKILL

    _wait_for_server_to_drop_the_dead_session(conn)
    half = conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'applied'),"
        " count(*) FILTER (WHERE status = 'pending') FROM feature_flag_schedules"
    ).fetchone()
    assert half is not None
    applied_before, pending_before = half
    assert applied_before > 0, "the kill came before any batch committed"
    assert pending_before > 0, "the kill came after the run had finished"
    stuck = conn.execute(
        "SELECT count(*) FROM feature_flag_schedules"
        " WHERE status NOT IN ('pending', 'applied', 'superseded')"
    ).fetchone()
    assert stuck == (0,)

    survivor = audit.start_invoker(database_url, FLAG_SCHEDULE_BATCH_SIZE="200")
    _, stderr = survivor.communicate(timeout=180)
    assert survivor.returncode == 0, stderr

    statuses = audit.check_exactly_once(conn)
    assert sum(statuses.values()) == 3000


def _wait_for_server_to_drop_the_dead_session(conn: psycopg.Connection[Any]) -> None:
    deadline = time.monotonic() + 30
    while True:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'flag-scheduler'"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
        if row == (0,):
            return
        assert time.monotonic() < deadline, "the killed invoker's session never ended"
        time.sleep(0.05)
