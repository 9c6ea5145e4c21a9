"""Migrations: up, down and up again; metadata and database agree; the claim uses its index."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, pool

from flag_scheduler.engine.limits import EARLIEST_TIME, END_OF_TIME, MAX_RETRY_COUNT
from flag_scheduler.store import sql
from flag_scheduler.store.catalog import Catalog
from migrations.schema import metadata
from tests.support import T0, alembic, public_tables, run_service

ROOT = Path(__file__).resolve().parents[2]
TABLES = (
    "feature_flags",
    "feature_flag_schedules",
    "feature_flag_schedule_attempts",
    "scheduler_run_state",
    "notification_outbox",
    "flag_ramps",
    "flag_ramp_events",
)


# Every timestamp column, by table: each has a <column>_in_range check.
MOMENT_COLUMNS = {
    "feature_flags": ("created_at", "updated_at"),
    "feature_flag_schedules": (
        "scheduled_at",
        "applied_at",
        "next_retry_at",
        "created_at",
        "updated_at",
        "requeued_at",
    ),
    "feature_flag_schedule_attempts": ("started_at", "finished_at"),
    "scheduler_run_state": ("last_run_started_at", "last_run_finished_at"),
    "flag_ramps": ("starts_at", "created_at", "updated_at", "finished_at"),
    "flag_ramp_events": ("at",),
}


def test_upgrade_downgrade_upgrade_on_an_empty_database(empty_database: str) -> None:
    up = alembic(empty_database, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert {"feature_flags", "feature_flag_schedules"} <= public_tables(empty_database)

    down = alembic(empty_database, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert public_tables(empty_database) == {"alembic_version"}

    again = alembic(empty_database, "upgrade", "head")
    assert again.returncode == 0, again.stderr
    current = alembic(empty_database, "current")
    head = alembic(empty_database, "heads").stdout.split()[0]
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
        "ck_feature_flag_schedules_retry_count_range",
        "ck_feature_flag_schedules_applied_at_iff_applied",
        "ck_feature_flag_schedules_next_retry_at_only_if_failed",
        "ck_feature_flag_schedules_last_error_length",
        *(
            f"ck_{table}_{column}_in_range"
            for table, columns in MOMENT_COLUMNS.items()
            for column in columns
        ),
        "ck_feature_flag_schedules_max_retries_range",
        "ix_feature_flag_schedules_due_at",
        "ix_feature_flag_schedules_flag_id_scheduled_at_id",
        "ck_feature_flag_schedules_last_error_class_valid",
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
        "fk_feature_flag_schedules_ramp_id_flag_ramps",
        "ck_feature_flag_schedules_ramp_stage_iff_ramp_id",
        "uq_feature_flag_schedules_ramp_id_live",
        "uq_feature_flag_schedules_ramp_id_ramp_stage",
        "ix_feature_flag_schedules_ramp_id_ramp_stage",
        "pk_flag_ramps",
        "fk_flag_ramps_flag_id_feature_flags",
        "ix_flag_ramps_flag_id",
        "uq_flag_ramps_flag_id_unfinished",
        *(
            f"ck_flag_ramps_{name}"
            for name in (
                "state_valid",
                "stages_count",
                "end_updates_is_object",
                "current_stage_range",
                "guard_alarms_count",
                "insufficient_data_valid",
                "value_before_is_object",
                "halt_error_class_valid",
                "halted_has_error_class",
                "halt_reason_length",
                "paused_remaining_only_if_paused",
                "created_by_length",
            )
        ),
        "pk_flag_ramp_events",
        "fk_flag_ramp_events_ramp_id_flag_ramps",
        "ix_flag_ramp_events_ramp_id_id",
        "ck_flag_ramp_events_action_valid",
        "ck_flag_ramp_events_stage_range",
        "ck_flag_ramp_events_actor_length",
        "ck_flag_ramp_events_detail_is_object",
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
            {
                "now": T0,
                "limit": 500,
                "max_updates_bytes": 4096,
                "skip": [uuid4()],
                "skip_flags": [uuid4()],
                "max_retry_count": MAX_RETRY_COUNT,
                "earliest": EARLIEST_TIME,
                "latest": END_OF_TIME,
            },
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


# Rows written before 0006 that its checks refuse: (name, status, assignments). Each row
# starts as a pending schedule due at T0; the assignments make it bad.
BAD_ROWS = [
    ("overflowing", "pending", "retry_count = 2147483647"),
    ("requeued_at_infinity", "pending", "requeued_at = 'infinity'"),
    ("retry_at_minus_infinity", "failed", "next_retry_at = '-infinity', retry_count = 1"),
    ("pending_with_leftovers", "pending", "applied_at = %(t0)s, next_retry_at = %(t0)s"),
    ("applied_without_applied_at", "applied", "updated_at = %(t0)s"),
    ("cancelled_with_retry", "cancelled", "next_retry_at = %(t0)s"),
    ("long_error", "cancelled", "last_error = repeat('x', 3000)"),
    ("applied_in_year_10000", "applied", "applied_at = '10000-01-01', updated_at = %(t0)s"),
]


def test_upgrade_over_rows_the_new_checks_refuse_parks_or_repairs_them(
    empty_database: str,
) -> None:
    url = empty_database
    assert alembic(url, "upgrade", "0005").returncode == 0
    ids: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        flag = conn.execute(
            "INSERT INTO feature_flags (flag_key, updated_at) VALUES ('x', 'infinity') RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        for name, status, assignments in BAD_ROWS:
            ids[name] = conn.execute(
                "INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates)"
                " VALUES (%s, %s, '{\"enabled\": true}') RETURNING id",
                (flag, T0),
            ).fetchone()[0]  # type: ignore[index]
            conn.execute(
                f"UPDATE feature_flag_schedules SET status = %(status)s, {assignments}"
                " WHERE id = %(id)s",
                {"status": status, "id": ids[name], "t0": T0},
            )
        conn.execute(
            "INSERT INTO feature_flag_schedule_attempts (schedule_id, attempt, started_at,"
            " finished_at, outcome) VALUES (%s, 1, %s, 'infinity', 'applied')",
            (ids["long_error"], T0),
        )
        conn.execute(
            "INSERT INTO scheduler_run_state (id, last_run_started_at, last_run_finished_at,"
            " last_summary) VALUES (1, '-infinity', %s, '{}')",
            (T0,),
        )

    up = alembic(url, "upgrade", "head")
    assert up.returncode == 0, up.stderr

    with psycopg.connect(url, autocommit=True) as conn:
        rows = {
            name: conn.execute(
                "SELECT status, retry_count, applied_at, next_retry_at, last_error_class,"
                " char_length(last_error), requeued_at FROM feature_flag_schedules"
                " WHERE id = %s",
                (schedule_id,),
            ).fetchone()
            for name, schedule_id in ids.items()
        }
        parked = ("failed", None, None, "unrecordable")
        assert rows["overflowing"][:1] + rows["overflowing"][2:5] == parked
        assert rows["overflowing"][1] == 10
        assert rows["requeued_at_infinity"][:1] + rows["requeued_at_infinity"][2:5] == parked
        assert rows["requeued_at_infinity"][6] is None
        assert rows["retry_at_minus_infinity"][:1] + rows["retry_at_minus_infinity"][2:5] == (
            parked
        )
        assert rows["pending_with_leftovers"][:4] == ("pending", 0, None, None)
        assert rows["applied_without_applied_at"][:3] == ("applied", 0, T0)
        assert rows["applied_in_year_10000"][:3] == ("applied", 0, T0)
        assert rows["cancelled_with_retry"][:4] == ("cancelled", 0, None, None)
        assert rows["long_error"][5] == 2000
        reasons = conn.execute(
            "SELECT s.last_error, a.attempt, a.outcome FROM feature_flag_schedules AS s"
            " JOIN feature_flag_schedule_attempts AS a ON a.schedule_id = s.id"
            " WHERE s.id = %s",
            (ids["overflowing"],),
        ).fetchall()
        assert reasons == [
            (
                "unrecordable: parked by migration 0006: retry_count 2147483647 is outside 0..10",
                None,
                "failed_permanently",
            )
        ]
        assert conn.execute("SELECT count(*) FROM scheduler_run_state").fetchone() == (0,)
        # Everything is loadable again: the operator's views and a run work.
        catalog = Catalog(conn)
        assert len(catalog.schedules()) == len(BAD_ROWS)
        catalog.status(T0)
        assert catalog.history(ids["long_error"])[0].finished_at.year < 9999
    # pending_with_leftovers is processed (applied or superseded by an equal applied one).
    summary = run_service(url, T0)
    assert (summary.claimed, summary.applied + summary.superseded) == (1, 1)

    down = alembic(url, "downgrade", "0005")
    assert down.returncode == 0, down.stderr
    again = alembic(url, "upgrade", "head")
    assert again.returncode == 0, again.stderr
