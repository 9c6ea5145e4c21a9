"""Migrations: up, down and up again; metadata and database agree; the claim uses its index."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, pool

from flag_scheduler import sql
from migrations.schema import metadata
from tests.support import T0

ROOT = Path(__file__).resolve().parents[2]
TABLES = (
    "feature_flags",
    "feature_flag_schedules",
    "feature_flag_schedule_attempts",
    "scheduler_run_state",
    "notification_outbox",
)


def _alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Alembic as an operator runs it: from the repository root, DATABASE_URL in the env."""
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def test_upgrade_downgrade_upgrade_on_an_empty_database(empty_database: str) -> None:
    up = _alembic(empty_database, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert {"feature_flags", "feature_flag_schedules"} <= _tables(empty_database)

    down = _alembic(empty_database, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert _tables(empty_database) == {"alembic_version"}

    again = _alembic(empty_database, "upgrade", "head")
    assert again.returncode == 0, again.stderr
    current = _alembic(empty_database, "current")
    head = _alembic(empty_database, "heads").stdout.split()[0]
    assert f"{head} (head)" in current.stdout


def test_alembic_without_database_url_says_what_is_missing() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "DATABASE_URL must be set" in result.stderr


def test_metadata_and_migrated_database_agree(database_url: str) -> None:
    url = "postgresql+psycopg://" + database_url.removeprefix("postgresql://")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection)
        diff = compare_metadata(context, metadata)
    engine.dispose()
    assert diff == []


def test_every_constraint_and_index_is_named_by_convention(conn: psycopg.Connection[Any]) -> None:
    names = {
        r[0]
        for r in conn.execute(
            # contype 'n': PostgreSQL 18 lists NOT NULL as constraints, named by itself.
            "SELECT conname FROM pg_constraint WHERE contype <> 'n' AND conrelid::regclass::text"
            " = ANY(%(tables)s) UNION SELECT indexname FROM pg_indexes"
            " WHERE tablename = ANY(%(tables)s)",
            {"tables": list(TABLES)},
        )
    }
    assert names == {
        "pk_feature_flags",
        "uq_feature_flags_flag_key_environment",
        "ck_feature_flags_rollout_percentage_range",
        "pk_feature_flag_schedules",
        "fk_feature_flag_schedules_flag_id_feature_flags",
        "ck_feature_flag_schedules_status_valid",
        "ck_feature_flag_schedules_retry_count_non_negative",
        "ck_feature_flag_schedules_max_retries_range",
        "ix_feature_flag_schedules_due_at",
        "ix_feature_flag_schedules_flag_id_scheduled_at_id",
        "ck_feature_flag_schedules_last_error_class_valid",
        "ck_feature_flag_schedules_scheduled_at_in_range",
        "pk_feature_flag_schedule_attempts",
        "fk_feature_flag_schedule_attempts_schedule_id",
        "ck_feature_flag_schedule_attempts_outcome_valid",
        "ck_feature_flag_schedule_attempts_error_class_valid",
        "ck_feature_flag_schedule_attempts_attempt_iff_attempted",
        "ck_feature_flag_schedule_attempts_error_length",
        "ix_feature_flag_schedule_attempts_schedule_id_id",
        "ix_feature_flag_schedule_attempts_failed_finished_at",
        "pk_scheduler_run_state",
        "ck_scheduler_run_state_single_row",
        "pk_notification_outbox",
        "uq_notification_outbox_message_id",
        "ck_notification_outbox_kind_valid",
        "ck_notification_outbox_message_id_length",
        "ck_notification_outbox_payload_is_object",
        "ck_notification_outbox_attempts_range",
        "ck_notification_outbox_last_error_length",
        "ck_notification_outbox_created_at_in_range",
        "ck_notification_outbox_next_attempt_at_in_range",
        "ck_notification_outbox_last_attempt_at_in_range",
        "ix_notification_outbox_next_attempt_at_id",
    }


def test_contract_constraints_reject_bad_rows(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO feature_flags (flag_key, rollout_percentage) VALUES ('x', 101)")
    flag_id = conn.execute(
        "INSERT INTO feature_flags (flag_key) VALUES ('x') RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO feature_flags (flag_key) VALUES ('x')")
    for column, value in (
        ("status", "'done'"),
        ("max_retries", "11"),
        ("retry_count", "-1"),
    ):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates, "
                f"{column}) VALUES (%s, now(), '{{}}', {value})",
                (flag_id,),
            )
    # Real timestamptz values no client can load: refused rather than blocking every claim.
    for moment in ("-infinity", "infinity", "0044-03-15 BC"):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates)"
                " VALUES (%s, %s::timestamptz, '{}')",
                (flag_id, moment),
            )


def test_claim_stays_an_index_scan_with_a_million_applied_rows(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute(
        "INSERT INTO feature_flags (flag_key) SELECT 'flag-' || g FROM generate_series(1, 100) g"
    )
    conn.execute(
        """
        WITH flags AS (SELECT array_agg(id) AS ids FROM feature_flags)
        INSERT INTO feature_flag_schedules (flag_id, scheduled_at, status, updates, applied_at)
        SELECT flags.ids[1 + g %% 100], %(t0)s - make_interval(secs => g), 'applied',
               '{"enabled": true}', %(t0)s
        FROM generate_series(1, 1000000) AS g, flags
        """,
        {"t0": T0},
    )
    conn.execute(
        """
        INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates)
        SELECT (SELECT id FROM feature_flags LIMIT 1), %(t0)s - make_interval(secs => g),
               '{"enabled": false}'
        FROM generate_series(1, 1000) AS g
        """,
        {"t0": T0},
    )
    conn.execute("ANALYZE feature_flag_schedules")
    conn.execute("ANALYZE feature_flags")
    with conn.transaction():
        plan_rows = conn.execute(
            "EXPLAIN (FORMAT JSON) " + sql.CLAIM_DUE_SCHEDULES,
            {"now": T0, "limit": 500, "max_updates_bytes": 4096},
        ).fetchone()
    scans = _scans(plan_rows[0][0]["Plan"])  # type: ignore[index]
    schedule_scans = [
        (node, index) for node, rel, index in scans if rel == "feature_flag_schedules"
    ]
    assert schedule_scans == [("Index Scan", "ix_feature_flag_schedules_due_at")], scans


def _scans(node: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """(node type, relation, index) of every scan in an EXPLAIN (FORMAT JSON) plan."""
    found = []
    if "Relation Name" in node:
        found.append((node["Node Type"], node["Relation Name"], node.get("Index Name")))
    for child in node.get("Plans", []):
        found.extend(_scans(child))
    return found
