"""Migration 0009 (created_by, actor, api_idempotency_keys): up, down and up again with rows."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.support import alembic


def _alembic(url: str, *args: str) -> None:
    result = alembic(url, *args)
    assert result.returncode == 0, result.stderr


def _columns(conn: psycopg.Connection[Any], table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
    )
    return {row[0] for row in rows}


def test_up_down_up_keeps_the_contract_rows(empty_database: str) -> None:
    _alembic(empty_database, "upgrade", "0008")
    with psycopg.connect(empty_database, autocommit=True) as conn:
        flag = conn.execute(
            "INSERT INTO feature_flags (flag_key) VALUES ('banner') RETURNING id"
        ).fetchone()
        assert flag is not None
        conn.execute(
            "INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates)"
            " VALUES (%s, now(), '{\"enabled\": true}')",
            (flag[0],),
        )
    _alembic(empty_database, "upgrade", "0009")
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert "created_by" in _columns(conn, "feature_flags")
        assert "created_by" in _columns(conn, "feature_flag_schedules")
        assert "actor" in _columns(conn, "feature_flag_schedule_attempts")
        schedule = conn.execute("SELECT id, created_by FROM feature_flag_schedules").fetchone()
        assert schedule is not None
        assert schedule[1] is None  # rows written before the API name no creator
        conn.execute(
            "INSERT INTO api_idempotency_keys (actor, idempotency_key, request_hash,"
            " schedule_id, response) VALUES ('a', 'k', 'h', %s, '{}')",
            (schedule[0],),
        )
        with pytest.raises(psycopg.errors.UniqueViolation) as refused:
            conn.execute(
                "INSERT INTO api_idempotency_keys (actor, idempotency_key, request_hash,"
                " schedule_id, response) VALUES ('a', 'k', 'other', %s, '{}')",
                (schedule[0],),
            )
        assert refused.value.diag.constraint_name == "pk_api_idempotency_keys"
    _alembic(empty_database, "downgrade", "0008")
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert "created_by" not in _columns(conn, "feature_flags")
        assert _columns(conn, "api_idempotency_keys") == set()
        assert conn.execute("SELECT count(*) FROM feature_flag_schedules").fetchone() == (1,)
    _alembic(empty_database, "upgrade", "head")
