"""The operator commands, run as a subprocess against a real database."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from flag_scheduler.store.catalog import Catalog
from flag_scheduler_cli import fault_injection
from tests.support import (
    Cli,
    history,
    row_counts,
    run_service,
    schedule_row,
    wait_for_lock_waiters,
)

pytestmark = pytest.mark.slow


def test_flags_create_list_and_show(cli: Cli) -> None:
    created = cli.json(
        "flags", "create", "banner", "--enable", "--rollout", "25", "--description", "Banner"
    )
    assert (created["flag_key"], created["enabled"], created["rollout_percentage"]) == (
        "banner",
        True,
        25,
    )
    cli.ok("flags", "create", "banner", "--env", "staging")
    listed = cli.json("flags", "list")
    assert [(f["flag_key"], f["environment"]) for f in listed] == [
        ("banner", "production"),
        ("banner", "staging"),
    ]
    assert "banner (production): enabled=true rollout=25" in cli.ok("flags", "show", "banner")
    shown = cli.json("flags", "show", "banner", "--env", "staging")
    assert shown["flag"]["environment"] == "staging"
    assert shown["schedules"] == []


def test_schedules_create_list_show_and_preview(cli: Cli) -> None:
    cli.ok("flags", "create", "banner")
    created = cli.json(
        "schedules",
        "create",
        "--flag",
        "banner",
        "--at",
        "2030-01-01T09:00:00+01:00",
        "--enable",
        "--rollout",
        "50",
        "--max-retries",
        "2",
    )
    assert created["scheduled_at"] == "2030-01-01T08:00:00Z"
    assert created["updates"] == {"enabled": True, "rollout_percentage": 50}
    assert created["max_retries"] == 2
    assert [s["id"] for s in cli.json("schedules", "list", "--status", "pending")] == [
        created["id"]
    ]
    assert cli.json("schedules", "list", "--due") == []
    *_, cut = cli.ok("schedules", "list", "--limit", "1").splitlines()
    assert not cut.startswith("(the first")  # one schedule: the limit cut nothing
    cli.json("schedules", "create", "--flag", "banner", "--at", "2030-01-02T09:00:00Z", "--enable")
    _, first, cut = cli.ok("schedules", "list", "--limit", "1").splitlines()
    assert first.startswith(created["id"])  # the earliest first
    assert cut == "(the first 1 shown; more match: --limit N shows more, or narrow the filter)"
    assert cli.json("schedules", "list", "--flag", "other") == []

    shown = cli.json("schedules", "show", created["id"])
    assert shown["state"] == "pending"
    assert [a["attempt"] for a in shown["upcoming"]["attempts"]] == [1, 2, 3]
    preview = cli.json("schedules", "preview", created["id"])
    assert preview["attempts"][0]["at"] == "2030-01-01T08:00:00Z"
    assert preview["permanently_failed_at"] == preview["attempts"][-1]["at"]
    text = cli.ok("schedules", "preview", created["id"])
    assert "if every attempt fails: permanently failed at" in text


def test_policy_preview_without_a_schedule(cli: Cli) -> None:
    out = cli.json(
        "schedules",
        "preview",
        "--max-retries",
        "3",
        "--base",
        "60",
        "--cap",
        "180",
        "--jitter",
        "10",
        "--from",
        "2030-01-01T00:00:00Z",
    )
    earliest = [a["earliest"] for a in out["attempts"]]
    assert earliest == [
        "2030-01-01T00:00:00Z",
        "2030-01-01T00:01:00Z",
        "2030-01-01T00:03:00Z",
        "2030-01-01T00:06:00Z",  # 60, 120, then capped at 180
    ]
    assert out["attempts"][-1]["latest"] == "2030-01-01T00:06:30Z"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        # unknown flag: operational, nothing to schedule
        (
            ("schedules", "create", "--flag", "nope", "--at", "now", "--enable"),
            1,
            "no flag 'nope' in environment 'production'",
        ),
        # a time without offset is refused rather than guessed
        (
            ("schedules", "create", "--flag", "banner", "--at", "2030-01-01T09:00:00", "--enable"),
            2,
            "has no time zone offset",
        ),
        (
            ("schedules", "create", "--flag", "banner", "--at", "soon", "--enable"),
            2,
            "expected an ISO 8601 time",
        ),
        # validated exactly like the engine validates updates
        (
            ("schedules", "create", "--flag", "banner", "--at", "now", "--rollout", "101"),
            2,
            "rollout_percentage: Input should be less than or equal to 100",
        ),
        (("schedules", "create", "--flag", "banner", "--at", "now"), 2, "say what to change"),
        (
            (
                "schedules",
                "create",
                "--flag",
                "banner",
                "--at",
                "now",
                "--enable",
                "--max-retries",
                "11",
            ),
            2,
            "must be an integer 0..10",
        ),
        (("flags", "create", "banner"), 1, "already exists"),
        (("flags", "show", "nope"), 1, "no flag 'nope'"),
        (("schedules", "show", "not-a-uuid"), 2, "not a schedule id"),
        (("schedules", "show", "00000000-0000-4000-8000-000000000000"), 1, "no schedule with id"),
        (("schedules", "preview", "--base", "100", "--cap", "10"), 2, "--cap must be >= --base"),
    ],
)
def test_bad_input_is_one_clear_line_and_changes_nothing(
    cli: Cli, conn: psycopg.Connection[Any], args: tuple[str, ...], code: int, message: str
) -> None:
    cli.ok("flags", "create", "banner")
    before = row_counts(conn)
    line = cli.fails(code, *args)
    assert message in line
    assert row_counts(conn) == before


def test_retry_and_cancel_refuse_an_applied_schedule(
    cli: Cli, conn: psycopg.Connection[Any], catalog: Catalog, database_url: str
) -> None:
    flag = catalog.create_flag("banner")
    schedule = catalog.create_schedule(
        flag, datetime.now(UTC) - timedelta(seconds=1), {"enabled": True}
    )
    run_service(database_url, datetime.now(UTC))
    before = row_counts(conn)

    assert "is already applied" in cli.fails(1, "schedules", "retry", str(schedule))
    assert "only a pending or waiting-for-retry schedule can be cancelled" in cli.fails(
        1, "schedules", "cancel", str(schedule)
    )
    assert row_counts(conn) == before


def test_fail_retry_inspect_requeue_and_apply(
    cli: Cli, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    cli.ok("flags", "create", "banner")
    flag = catalog.get_flag("banner").id
    created = cli.json(
        "schedules", "create", "--flag", "banner", "--at", "now", "--enable", "--max-retries", "1"
    )
    fault_injection.set_fault(conn, flag, "40001", "conflict")

    summary = json.loads(cli.ok("invoke"))
    assert summary["retried"] == 1
    shown = cli.json("schedules", "show", created["id"])
    assert shown["state"] == "waiting_for_retry"
    assert shown["upcoming"]["attempts"][0]["at"] == shown["schedule"]["next_retry_at"]
    assert [h["outcome"] for h in shown["history"]] == ["retry_scheduled"]

    # The retry is due in ~2 minutes: make it due now instead of waiting.
    conn.execute("UPDATE feature_flag_schedules SET next_retry_at = now() - interval '1 s'")
    assert json.loads(cli.ok("invoke"))["failed_permanently"] == 1
    assert cli.json("schedules", "show", created["id"])["state"] == "failed_permanently"
    assert cli.json("status")["failed_last_24h"] == 1

    fault_injection.clear_fault(conn, flag)
    requeued = cli.json("schedules", "retry", created["id"])
    assert (requeued["status"], requeued["retry_count"], requeued["last_error"]) == (
        "pending",
        0,
        None,
    )
    assert json.loads(cli.ok("invoke"))["applied"] == 1

    assert history(conn, created["id"]) == [
        (1, "retry_scheduled", "serialization_failure"),
        (2, "failed_permanently", "serialization_failure"),
        (None, "requeued", None),
        (1, "applied", None),
    ]
    status = cli.json("status")
    assert status["last_run_summary"]["applied"] == 1
    assert catalog.get_flag("banner").enabled is True


def test_cancel_a_waiting_schedule(
    cli: Cli, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    cli.ok("flags", "create", "banner")
    created = cli.json("schedules", "create", "--flag", "banner", "--at", "now", "--enable")
    fault_injection.set_fault(conn, catalog.get_flag("banner").id, "55P03")
    cli.ok("invoke")

    cancelled = cli.json("schedules", "cancel", created["id"])

    assert (cancelled["status"], cancelled["next_retry_at"]) == ("cancelled", None)
    assert [h[1] for h in history(conn, created["id"])] == ["retry_scheduled", "cancelled"]
    # A retry time on a cancelled row is refused by the schema (0006) rather than ignored.
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE feature_flag_schedules SET next_retry_at = now()")
    assert json.loads(cli.ok("invoke"))["claimed"] == 0


def test_status_at_a_glance(cli: Cli, conn: psycopg.Connection[Any], catalog: Catalog) -> None:
    flag = catalog.create_flag("banner")
    now = datetime.now(UTC)
    catalog.create_schedule(flag, now - timedelta(minutes=5), {"enabled": True})
    catalog.create_schedule(flag, now + timedelta(hours=1), {"enabled": False})

    status = cli.json("status")

    assert (status["due_now"], status["scheduled_later"], status["waiting_for_retry"]) == (1, 1, 0)
    assert 290 < status["oldest_lag_seconds"] < 400
    assert status["last_run_finished_at"] is None
    assert "last successful run:          never" in cli.ok("status")


def test_migrate_and_migrate_sql(cli: Cli) -> None:
    assert "newest schema" in cli.ok("migrate")  # already at head: nothing to do
    sql = cli.ok("migrate", "--sql")
    assert "CREATE TABLE feature_flags" in sql
    assert "CREATE TABLE feature_flag_schedule_attempts" in sql


def test_cancel_racing_a_run_either_cancels_first_or_reports_the_application(
    cli: Cli, conn: psycopg.Connection[Any], catalog: Catalog, database_url: str
) -> None:
    flag = catalog.create_flag("banner")
    now = datetime.now(UTC)
    schedule = catalog.create_schedule(flag, now - timedelta(seconds=1), {"enabled": True})

    # A run claims the schedule, then waits for the flag row another transaction holds.
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT 1 FROM feature_flags WHERE id = %s FOR NO KEY UPDATE", (flag,))
        run = threading.Thread(target=run_service, args=(database_url, now), daemon=True)
        run.start()
        wait_for_lock_waiters(conn, count=1)
        # The cancel now waits for the run's row lock on the schedule.
        cancel = subprocess.Popen(
            [sys.executable, "-m", "flag_scheduler_cli.cli", "schedules", "cancel", str(schedule)],
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for_lock_waiters(conn, count=2)
    run.join(timeout=30)
    _, stderr = cancel.communicate(timeout=60)

    assert cancel.returncode == 1
    assert "is already applied" in stderr
    assert schedule_row(conn, schedule).status == "applied"

    # And the other order: cancelled before any run claims it, then nothing is applied.
    later = catalog.create_schedule(flag, now - timedelta(seconds=1), {"enabled": False})
    cli.ok("schedules", "cancel", str(later))
    assert run_service(database_url, datetime.now(UTC)).claimed == 0
    assert catalog.get_flag("banner").enabled is True


def test_a_write_waits_for_a_held_schedule_no_longer_than_the_lock_timeout(
    cli: Cli, catalog: Catalog, database_url: str
) -> None:
    flag = catalog.create_flag("banner")
    schedule = catalog.create_schedule(
        flag, datetime.now(UTC) + timedelta(hours=1), {"enabled": True}
    )
    cli.env["FLAG_SCHEDULE_LOCK_TIMEOUT_MS"] = "200"
    with psycopg.connect(database_url) as run, run.transaction():
        # As a run applying the schedule holds its row until it commits.
        run.execute("SELECT 1 FROM feature_flag_schedules WHERE id = %s FOR UPDATE", (schedule,))
        started = time.monotonic()
        line = cli.fails(1, "schedules", "cancel", str(schedule))
        waited = time.monotonic() - started
    assert line == (
        "flag-scheduler: error: database: canceling statement due to lock timeout"
        " (a scheduler run or another operator holds these rows; try again in a moment)"
    )
    assert waited < 5  # the default lock timeout alone (5 s) would be longer
    cli.ok("schedules", "cancel", str(schedule))  # once the run has committed


def test_status_list_and_show_print_an_unloadable_moment_instead_of_failing(
    cli: Cli, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    now = datetime.now(UTC)
    requeued = catalog.create_schedule(flag, now - timedelta(minutes=1), {"enabled": True})
    waiting = catalog.create_schedule(flag, now + timedelta(hours=1), {"enabled": False})
    # Rows written before revision 0006's checks (re-added NOT VALID, as they would stand).
    for column in ("requeued_at", "next_retry_at"):
        name = f"ck_feature_flag_schedules_{column}_in_range"
        (definition,) = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s", (name,)
        ).fetchone()  # type: ignore[misc]
        conn.execute(f"ALTER TABLE feature_flag_schedules DROP CONSTRAINT {name}")
        conn.execute(
            f"UPDATE feature_flag_schedules SET {column} = 'infinity',"
            " status = CASE WHEN %(column)s = 'next_retry_at' THEN 'failed' ELSE status END"
            " WHERE id = %(id)s",
            {"column": column, "id": requeued if column == "requeued_at" else waiting},
        )
        conn.execute(
            f"ALTER TABLE feature_flag_schedules ADD CONSTRAINT {name} {definition} NOT VALID"
        )

    assert "waiting for retry:            1 (next at infinity)" in cli.ok("status")
    assert "infinity" in cli.ok("schedules", "list")
    assert "next retry:  infinity" in cli.ok("schedules", "show", str(waiting))
    cli.ok("schedules", "show", str(requeued))
    assert cli.json("schedules", "show", str(requeued))["schedule"]["requeued_at"] == "infinity"


def test_a_database_refusal_is_one_line_naming_the_database(cli: Cli) -> None:
    # libpq reads PGOPTIONS: every transaction of the command is read-only.
    cli.env["PGOPTIONS"] = "-c default_transaction_read_only=on"
    line = cli.fails(1, "flags", "create", "banner")
    assert line == (
        "flag-scheduler: error: database: cannot execute INSERT in a read-only transaction"
    )


def test_a_local_time_in_a_zone_is_checked_as_the_api_checks_it(cli: Cli) -> None:
    cli.ok("flags", "create", "banner")
    base = ("schedules", "create", "--flag", "banner", "--enable", "--time-zone", "Europe/Berlin")
    gap = cli.fails(2, *base, "--at", "2030-03-31T02:30")
    assert "2030-03-31T02:30" in gap
    assert "gap" in gap
    overlap = cli.fails(2, *base, "--at", "2030-10-27T02:30")
    assert "happens twice" in overlap
    assert "fold" in overlap
    # the zone is named as the option that gave it, not as --at
    assert cli.fails(2, *base[:-1], "Europe/Berlim", "--at", "2030-01-01T09:00") == (
        "flag-scheduler: error: --time-zone: 'Europe/Berlim' is not an IANA time zone name"
        " (e.g. Europe/Berlin, UTC)"
    )
    assert cli.fails(2, *base[:-1], "europe/berlin", "--at", "2030-01-01T09:00").endswith(
        "--time-zone: 'europe/berlin' is not an IANA time zone name; did you mean"
        " Europe/Berlin? (case matters)"
    )
    assert "--fold needs --time-zone" in cli.fails(
        2, "schedules", "create", "--flag", "banner", "--enable", "--at", "now", "--fold", "1"
    )
    second = cli.json(*base, "--at", "2030-10-27T02:30", "--fold", "1")
    assert second["scheduled_at"] == "2030-10-27T01:30:00Z"  # CET, after the clocks went back
    winter = cli.json(*base, "--at", "2030-12-24T09:00")
    assert winter["scheduled_at"] == "2030-12-24T08:00:00Z"
    assert len(cli.json("schedules", "list")) == 2  # the refused ones wrote nothing
