"""The set-based batch path, and its per-schedule fallback when a bulk statement fails."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import psycopg

from flag_scheduler.store.catalog import Catalog
from flag_scheduler_cli import fault_injection
from tests.support import T0, history, run_service, schedule_row
from tests.system import audit


def _seed(catalog: Catalog, flags: int, schedules: int) -> list[Any]:
    rng = random.Random(7)
    flag_ids = [catalog.create_flag(f"flag-{i:04d}") for i in range(flags)]
    for i in range(schedules):
        updates: dict[str, object] = {"rollout_percentage": rng.randint(0, 100)}
        if rng.random() < 0.5:
            updates["enabled"] = rng.random() < 0.5
        catalog.create_schedule(flag_ids[i % flags], T0 - timedelta(seconds=i), updates)
    return flag_ids


def test_a_batch_of_a_thousand_takes_a_handful_of_statements(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    _seed(catalog, flags=200, schedules=1000)
    audit.install(conn, write_delay_seconds=0)

    summary = run_service(database_url, T0, batch_size=1000)

    assert summary.applied == 1000
    # timeouts, claim, lock, applied-since, flags, outcomes, history, an empty claim...
    assert summary.statements <= 15, summary.statements
    assert summary.transactions == 2
    writes = conn.execute("SELECT count(*) FROM flag_writes").fetchone()
    assert writes == (200,)  # each flag written once
    audit.check_exactly_once(conn)


def test_one_poisoned_schedule_in_a_batch_of_a_thousand_fails_alone(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flags = _seed(catalog, flags=1000, schedules=1000)
    poisoned = flags[500]
    fault_injection.set_fault(conn, poisoned, "40001", "poison")
    audit.install(conn, write_delay_seconds=0)

    summary = run_service(database_url, T0, batch_size=1000)

    assert (summary.applied, summary.retried) == (999, 1)
    victim = conn.execute(
        "SELECT id FROM feature_flag_schedules WHERE flag_id = %s", (poisoned,)
    ).fetchone()
    assert victim is not None
    row = schedule_row(conn, victim[0])
    assert (row.status, row.retry_count, row.last_error) == (
        "failed",
        1,
        "serialization_failure: poison",
    )
    assert history(conn, victim[0]) == [(1, "retry_scheduled", "serialization_failure")]
    statuses = audit.check_exactly_once_or_waiting(conn)
    assert statuses == {"applied": 999, "failed": 1}


def test_schedules_of_one_flag_in_one_batch_end_in_the_latest_values(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    for i in range(50):
        catalog.create_schedule(flag, T0 - timedelta(minutes=50 - i), {"rollout_percentage": i})
    catalog.create_schedule(flag, T0 - timedelta(minutes=30), {"enabled": True})
    audit.install(conn, write_delay_seconds=0)

    run_service(database_url, T0, batch_size=1000)

    assert catalog.get_flag("banner").rollout_percentage == 49
    assert catalog.get_flag("banner").enabled is True
    assert conn.execute("SELECT count(*) FROM flag_writes").fetchone() == (1,)
