"""Migration 0010 (ramps): up, down (refused while a ramp is unfinished) and up again with
rows, its named constraints enforced."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.support import alembic

NOW = datetime.now(UTC)


def _alembic(url: str, *args: str, expect: int = 0) -> str:
    result = alembic(url, *args)
    assert result.returncode == expect, result.stderr
    return result.stderr


def _refused_by(conn: psycopg.Connection[Any], statement: str, *params: Any) -> str:
    with pytest.raises(psycopg.errors.IntegrityError) as refused:
        conn.execute(statement, params)
    return str(refused.value.diag.constraint_name)


def _stage(conn: psycopg.Connection[Any], flag: Any, ramp: Any, stage: int, **row: Any) -> Any:
    found = conn.execute(
        "INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates, ramp_id, ramp_stage,"
        " status, next_retry_at, retry_count, last_error, last_error_class)"
        " VALUES (%s, %s, '{\"rollout_percentage\": 5}', %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (
            flag,
            NOW,
            ramp,
            stage,
            row.get("status", "pending"),
            row.get("next_retry_at"),
            row.get("retry_count", 0),
            row.get("last_error"),
            row.get("last_error_class"),
        ),
    ).fetchone()
    assert found is not None
    return found[0]


def _ramp(conn: psycopg.Connection[Any], flag: Any, state: str = "active") -> Any:
    stages = [{"updates": {"rollout_percentage": r}, "hold_seconds": 600} for r in (5, 50)]
    found = conn.execute(
        "INSERT INTO flag_ramps (flag_id, starts_at, stages, state, created_by,"
        " halt_error_class, halt_reason) VALUES (%s, %s, %s, %s, 'test', %s, %s) RETURNING id",
        (
            flag,
            NOW,
            Jsonb(stages),
            state,
            "guard_alarm" if state == "halted" else None,
            "alarm" if state == "halted" else None,
        ),
    ).fetchone()
    assert found is not None
    return found[0]


def test_up_down_up_with_ramps_refuses_while_one_is_unfinished_and_keeps_every_schedule(
    empty_database: str,
) -> None:
    _alembic(empty_database, "upgrade", "0009")
    with psycopg.connect(empty_database, autocommit=True) as conn:
        flags = [
            row[0]
            for row in conn.execute(
                "INSERT INTO feature_flags (flag_key) VALUES ('a'), ('b'), ('c') RETURNING id"
            )
        ]
        conn.execute(
            "INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates)"
            " VALUES (%s, %s, '{\"enabled\": true}')",
            (flags[0], NOW + timedelta(hours=1)),
        )
    _alembic(empty_database, "upgrade", "0010")
    with psycopg.connect(empty_database, autocommit=True) as conn:
        live = _ramp(conn, flags[0])
        pending = _stage(conn, flags[0], live, 0)
        retrying = _ramp(conn, flags[1])
        waiting = _stage(
            conn,
            flags[1],
            retrying,
            0,
            status="failed",
            next_retry_at=NOW + timedelta(minutes=2),
            retry_count=1,
            last_error="lock_timeout: x",
            last_error_class="lock_timeout",
        )
        halted = _ramp(conn, flags[2], "halted")
        alarmed = _stage(
            conn,
            flags[2],
            halted,
            0,
            status="failed",
            last_error="guard_alarm: alarm x in ALARM",
            last_error_class="guard_alarm",
        )
        conn.execute(
            "INSERT INTO feature_flag_schedule_attempts (schedule_id, attempt, started_at,"
            " finished_at, outcome, error_class, error)"
            " VALUES (%s, 1, now(), now(), 'failed_permanently', 'guard_alarm', 'alarm x')",
            (alarmed,),
        )
        # Named constraints: one live stage per ramp, each stage once, states, stage numbers.
        insert_stage = (
            "INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates, ramp_id,"
            " ramp_stage, status) VALUES (%s, now(), '{}', %s, %s, %s)"
        )
        assert (
            _refused_by(conn, insert_stage, flags[0], live, 1, "pending")
            == "uq_feature_flag_schedules_ramp_id_live"
        )
        assert (
            _refused_by(conn, insert_stage, flags[0], live, 0, "superseded")
            == "uq_feature_flag_schedules_ramp_id_ramp_stage"
        )
        assert (
            _refused_by(conn, insert_stage, flags[0], live, 21, "cancelled")
            == "ck_feature_flag_schedules_ramp_stage_iff_ramp_id"
        )
        assert (
            _refused_by(conn, "UPDATE flag_ramps SET state = 'bogus' WHERE id = %s", live)
            == "ck_flag_ramps_state_valid"
        )
        assert (
            _refused_by(
                conn, "UPDATE feature_flag_schedules SET ramp_stage = NULL WHERE id = %s", pending
            )
            == "ck_feature_flag_schedules_ramp_stage_iff_ramp_id"
        )

    refused = _alembic(empty_database, "downgrade", "0009", expect=1)
    assert "3 ramp(s) unfinished (active, paused or halted)" in refused
    assert "flag-scheduler ramps abort ID" in refused
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM flag_ramps").fetchone() == (3,)  # untouched
        # As `ramps abort` leaves them: the live stages cancelled, the ramps aborted.
        conn.execute(
            "UPDATE feature_flag_schedules SET status = 'cancelled', next_retry_at = NULL"
            " WHERE id = ANY(%s)",
            ([pending, waiting],),
        )
        conn.execute("UPDATE flag_ramps SET state = 'aborted', finished_at = now()")
    _alembic(empty_database, "downgrade", "0009")
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('flag_ramps')").fetchone() == (None,)
        rows = dict(conn.execute("SELECT id, status FROM feature_flag_schedules").fetchall())
        assert len(rows) == 4  # every schedule kept
        assert (rows[pending], rows[waiting], rows[alarmed]) == ("cancelled", "cancelled", "failed")
        assert conn.execute(
            "SELECT last_error_class FROM feature_flag_schedules WHERE id = %s", (alarmed,)
        ).fetchone() == ("unknown",)
        assert conn.execute(
            "SELECT error_class FROM feature_flag_schedule_attempts WHERE schedule_id = %s"
            " AND outcome = 'failed_permanently'",
            (alarmed,),
        ).fetchone() == ("unknown",)
    _alembic(empty_database, "upgrade", "head")
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM flag_ramps").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM feature_flag_schedules").fetchone() == (4,)
