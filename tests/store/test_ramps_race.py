"""An operator's pause racing a run that applies the ramp's live stage (real processes)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from flag_scheduler.engine.ramp_rules import CheckedRamp, StagePlan
from flag_scheduler.engine.states import InsufficientData, RampState
from flag_scheduler.store.catalog import Catalog
from flag_scheduler.store.ramps import Ramps
from tests.support import Cli, wait_for_lock_waiters

HOLD = 3600


def test_a_pause_waiting_for_a_run_pauses_the_stage_the_run_created(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    catalog.create_flag("checkout-v2", enabled=True)
    stages = tuple(StagePlan({"rollout_percentage": r}, HOLD) for r in (5, 25))
    ramp = Ramps(conn).create(
        catalog.get_flag("checkout-v2"),
        CheckedRamp(stages, None, ()),
        start=datetime.now(UTC) - timedelta(minutes=1),
        guard_alarms=[],
        rollback_on_alarm=False,
        insufficient_data=InsufficientData.WAIT,
        now=datetime.now(UTC),
        actor="test",
    )
    # A run, mid-transaction: it holds stage 0's schedule, has applied it and created
    # stage 1 (due its hold later), and has not committed yet.
    run = psycopg.connect(database_url)
    stage_0 = run.execute(
        "SELECT id FROM feature_flag_schedules WHERE ramp_id = %s FOR UPDATE", (ramp.id,)
    ).fetchone()
    assert stage_0 is not None
    applied_at = datetime.now(UTC)
    run.execute(
        "UPDATE feature_flag_schedules SET status = 'applied', applied_at = %s WHERE id = %s",
        (applied_at, stage_0[0]),
    )
    run.execute(
        "INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates, ramp_id, ramp_stage)"
        " SELECT flag_id, %s, %s, id, 1 FROM flag_ramps WHERE id = %s",
        (applied_at + timedelta(seconds=HOLD), Jsonb({"rollout_percentage": 25}), ramp.id),
    )
    run.execute("UPDATE flag_ramps SET current_stage = 1 WHERE id = %s", (ramp.id,))

    pause = subprocess.Popen(
        [sys.executable, "-m", "flag_scheduler_cli.cli", "ramps", "pause", str(ramp.id)],
        env=Cli(database_url).env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_lock_waiters(conn, application_name="flag-scheduler-cli")
        run.commit()
        out, err = pause.communicate(timeout=60)
    finally:
        pause.kill()
        run.close()
    assert pause.returncode == 0, err
    assert "at stage 1" in out

    paused = Ramps(conn).show(ramp.id)
    assert (paused.ramp.state, paused.ramp.current_stage) == (RampState.PAUSED, 1)
    # the stage the run created is the one cancelled, and its whole hold is kept
    assert [(s.stage, s.status) for s in paused.schedules] == [(0, "applied"), (1, "cancelled")]
    remaining = paused.ramp.paused_remaining_seconds
    assert remaining is not None
    assert HOLD - 60 < remaining <= HOLD
