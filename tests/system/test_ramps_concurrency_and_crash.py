"""Ramps under real OS processes, each invoking the scheduler's Lambda handler: four of them
over 200 ramps with random transient faults apply every stage exactly once, in order, each
after its full hold; one killed between applying a stage and committing leaves that stage
and its successor to be created exactly once by the next run."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from flag_scheduler.store.catalog import Catalog
from flag_scheduler_cli import fault_injection
from tests.support import insert_ramp, ramp_stages, ramp_state
from tests.system import audit

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ROLLOUTS = [5, 25, 50, 100]
HOLD_SECONDS = 1

# Every committed application of a stage, with the database clock's moment.
INSTALL_STAGE_AUDIT = """
CREATE TABLE stage_applications (
    schedule_id uuid NOT NULL, ramp_id uuid NOT NULL, stage int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION audit_stage_applied() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stage_applications (schedule_id, ramp_id, stage)
    VALUES (NEW.id, NEW.ramp_id, NEW.ramp_stage);
    RETURN NEW;
END $$;
CREATE TRIGGER audit_stage_applied AFTER UPDATE ON feature_flag_schedules
    FOR EACH ROW WHEN (NEW.status = 'applied' AND OLD.status <> 'applied'
                       AND NEW.ramp_id IS NOT NULL)
    EXECUTE FUNCTION audit_stage_applied();
"""


def _worker(database_url: str, mode: str, seconds: float = 120) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.system.ramp_worker", database_url, mode, str(seconds)],
        cwd=ROOT,
        env=audit.invoke_env(database_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ramps(
    conn: psycopg.Connection[Any], catalog: Catalog, count: int, hold_seconds: int = HOLD_SECONDS
) -> list[UUID]:
    start = datetime.now(UTC)
    return [
        insert_ramp(
            conn,
            catalog.create_flag(f"ramp-{i:03d}"),
            start,
            ROLLOUTS,
            hold_seconds=hold_seconds,
        )
        for i in range(count)
    ]


def test_four_processes_apply_every_stage_of_200_ramps_once_in_order_after_its_hold(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    ramps = _ramps(conn, catalog, 200)
    audit.install(conn, write_delay_seconds=0.001)
    conn.execute(INSTALL_STAGE_AUDIT)
    fault_injection.set_random_faults(conn, rate=0.2, sqlstates=["40001", "40P01"], seed=12)

    started = time.monotonic()
    workers = [_worker(database_url, "drain") for _ in range(4)]
    results = []
    for process in workers:
        stdout, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr
        results.append(json.loads(stdout.splitlines()[-1]))
    elapsed = time.monotonic() - started

    audit.check_exactly_once(conn)
    applications: dict[UUID, list[tuple[int, datetime]]] = defaultdict(list)
    for ramp_id, stage, at in conn.execute(
        "SELECT ramp_id, stage, at FROM stage_applications ORDER BY at"
    ):
        applications[ramp_id].append((stage, at))
    gaps = []
    for ramp_id in ramps:
        stages = applications[ramp_id]
        assert [stage for stage, _ in stages] == [0, 1, 2, 3], (ramp_id, stages)
        for (_, before), (_, after) in itertools.pairwise(stages):
            gaps.append(after - before)
        assert ramp_state(conn, ramp_id)[0] == "completed"
    assert min(gaps) >= timedelta(seconds=HOLD_SECONDS), min(gaps)
    retried = sum(r["retried"] for r in results)
    print(
        f"4 processes, 200 ramps x 4 stages in {elapsed:.1f} s:"
        f" stages applied {sum(r['ramp_stages_applied'] for r in results)},"
        f" ramps completed {sum(r['ramps_completed'] for r in results)},"
        f" halted {sum(r['ramps_halted'] for r in results)}, retries {retried},"
        f" claimed per process {[r['claimed'] for r in results]},"
        f" shortest observed hold {min(gaps).total_seconds():.3f} s"
        f" (hold {HOLD_SECONDS} s)"
    )
    assert sum(r["ramp_stages_applied"] for r in results) == 800
    assert sum(r["ramps_completed"] for r in results) == 200
    assert retried > 0  # the faults really struck
    assert sum(1 for r in results if r["ramp_stages_applied"] > 0) >= 2, results


def test_a_process_killed_before_committing_a_stage_leaves_it_and_its_successor_once(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    # A hold far longer than the test: the rerun below must find stage 1 not yet due, so
    # "a rerun adds nothing" holds on a slow machine too.
    (ramp,) = _ramps(conn, catalog, 1, hold_seconds=60)
    audit.install(conn, write_delay_seconds=0)
    victim = _worker(database_url, "crash")
    assert victim.stdout is not None
    for line in victim.stdout:  # (log lines at WARNING and above may come first)
        if line.startswith("ramp step written"):
            break
    else:
        raise AssertionError(f"the process ended before writing a ramp step: {victim.wait()}")
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=10)
    assert victim.returncode == -signal.SIGKILL
    _wait_for_no_scheduler_session(conn)
    # Nothing of the killed transaction is left: stage 0 still pending, no stage 1.
    assert [row[:2] for row in ramp_stages(conn, ramp)] == [(0, "pending")]
    assert ramp_state(conn, ramp)[:2] == ("active", 0)

    survivor = _worker(database_url, "once")
    _, stderr = survivor.communicate(timeout=60)
    assert survivor.returncode == 0, stderr
    assert [row[:2] for row in ramp_stages(conn, ramp)] == [(0, "applied"), (1, "pending")]
    survivor = _worker(database_url, "once")  # a rerun adds nothing
    survivor.communicate(timeout=60)
    assert [row[:2] for row in ramp_stages(conn, ramp)] == [(0, "applied"), (1, "pending")]
    events = conn.execute(
        "SELECT action, stage FROM flag_ramp_events WHERE ramp_id = %s", (ramp,)
    ).fetchall()
    assert events == [("stage_applied", 0)]


def _wait_for_no_scheduler_session(conn: psycopg.Connection[Any]) -> None:
    deadline = time.monotonic() + 30
    while True:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'flag-scheduler'"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
        if row == (0,):
            return
        assert time.monotonic() < deadline, "the killed process's session never ended"
        time.sleep(0.05)
