"""Rows the engine cannot process or record: refused by the schema, parked by the run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from flag_scheduler.engine.states import MessageKind
from flag_scheduler.store.catalog import Catalog, UnloadableMoment
from flag_scheduler_cli import render
from tests.support import (
    T0,
    alerts,
    history,
    insert_ramp,
    ramp_stages,
    ramp_state,
    run_service,
    schedule_row,
)

INT_MAX = 2_147_483_647


@contextmanager
def _check_added_after(conn: psycopg.Connection[Any], table: str, name: str) -> Iterator[None]:
    """Write a row the check refuses, as if it predated the check: drop it, write, re-add it
    NOT VALID (so it holds for every later write but not for the row already there)."""
    (definition,) = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s", (name,)
    ).fetchone()  # type: ignore[misc]
    conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    yield
    conn.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition} NOT VALID")


def _poison(conn: psycopg.Connection[Any], catalog: Catalog, flag: UUID, due: Any) -> UUID:
    """A due schedule whose attempt number (retry_count + 1) overflows an integer."""
    schedule = catalog.create_schedule(flag, due, {"enabled": True})
    with _check_added_after(
        conn, "feature_flag_schedules", "ck_feature_flag_schedules_retry_count_range"
    ):
        conn.execute(
            "UPDATE feature_flag_schedules SET retry_count = %s WHERE id = %s", (INT_MAX, schedule)
        )
    return schedule


def _assert_parked(conn: psycopg.Connection[Any], schedule: UUID, reason: str) -> None:
    row = schedule_row(conn, schedule)
    assert (row.status, row.next_retry_at, row.applied_at) == ("failed", None, None)
    assert row.last_error is not None
    assert row.last_error.startswith("unrecordable: "), row.last_error
    assert reason in row.last_error
    assert history(conn, schedule) == [(None, "failed_permanently", "unrecordable")]


def test_the_schema_refuses_values_the_engine_cannot_process(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    schedule = catalog.create_schedule(flag, T0, {"enabled": True})
    refused = [
        # The largest retry_count the engine writes is max_retries' ceiling, 10.
        ("feature_flag_schedules", "retry_count = 11"),
        ("feature_flag_schedules", f"retry_count = {INT_MAX}"),
        # A pending row has no applied_at and no next retry; an applied one has applied_at.
        ("feature_flag_schedules", "applied_at = now()"),
        ("feature_flag_schedules", "next_retry_at = now()"),
        ("feature_flag_schedules", "status = 'applied'"),
        ("feature_flag_schedules", "status = 'superseded', next_retry_at = now()"),
        ("feature_flag_schedules", "last_error = repeat('x', 2001)"),
        # Every timestamp no client can load, in every table.
        *(
            ("feature_flag_schedules", f"{column} = '{moment}'")
            for column in ("requeued_at", "created_at", "updated_at")
            for moment in ("infinity", "-infinity", "10000-01-01", "0044-03-15 BC")
        ),
        ("feature_flag_schedules", "status = 'failed', next_retry_at = 'infinity'"),
        ("feature_flag_schedules", "status = 'applied', applied_at = '-infinity'"),
        ("feature_flags", "updated_at = 'infinity'"),
        ("feature_flags", "created_at = '-infinity'"),
        ("feature_flag_schedule_attempts", "finished_at = 'infinity'"),
        ("feature_flag_schedule_attempts", "started_at = '-infinity'"),
        ("scheduler_run_state", "last_run_finished_at = 'infinity'"),
        ("scheduler_run_state", "last_run_started_at = '-infinity'"),
    ]
    catalog.cancel(schedule, now=T0, actor="test")  # one history row to update
    run_service(database_url, T0)  # one run state row to update
    conn.execute("UPDATE feature_flag_schedules SET status = 'pending' WHERE id = %s", (schedule,))
    for table, assignment in refused:
        with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
            conn.execute(f"UPDATE {table} SET {assignment}")
    # What the engine and the CLI do write still passes.
    for assignment in (
        "retry_count = 10",
        "status = 'failed', next_retry_at = now(), retry_count = 3",
        "status = 'failed', next_retry_at = NULL",
        "status = 'applied', applied_at = now(), next_retry_at = NULL",
    ):
        conn.execute(f"UPDATE feature_flag_schedules SET {assignment} WHERE id = %s", (schedule,))


def test_a_poison_row_in_a_batch_of_5000_is_parked_without_the_per_row_fallback(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flags = [catalog.create_flag(f"flag-{i:03d}") for i in range(500)]
    conn.execute(
        """
        INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates)
        SELECT (%(flags)s::uuid[])[1 + g %% 500], %(t0)s - make_interval(secs => g),
               '{"rollout_percentage": 50}'
        FROM generate_series(1, 5000) AS g
        """,
        {"flags": flags, "t0": T0},
    )
    poison = _poison(conn, catalog, flags[0], T0 - timedelta(hours=3))

    summary = run_service(database_url, T0, batch_size=5000)

    assert (summary.applied, summary.unrecordable) == (5000, 1)
    # Set-based as without the poison row: the claim names it, one statement parks it.
    # (Before: every one of the 5,000 went through its own savepoints, about 25,000.)
    assert summary.statements <= 20, summary.statements
    _assert_parked(conn, poison, f"retry_count {INT_MAX} is outside 0..10")
    assert run_service(database_url, T0).claimed == 0


def test_with_batches_of_one_a_poison_row_no_longer_blocks_the_queue(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    poison = _poison(conn, catalog, flag, T0 - timedelta(hours=1))  # due first
    others = [
        catalog.create_schedule(flag, T0 - timedelta(minutes=i), {"rollout_percentage": i})
        for i in (3, 2, 1)
    ]

    summary = run_service(database_url, T0, batch_size=1)

    assert (summary.claimed, summary.applied, summary.unrecordable) == (4, 3, 1)
    assert [schedule_row(conn, s).status for s in others] == ["applied"] * 3
    _assert_parked(conn, poison, "retry_count")
    # An operator sees it as permanently failed.
    assert catalog.get_schedule(poison).state == "failed_permanently"
    assert catalog.status(T0).failed_last_24h == 1


def test_an_outcome_that_cannot_be_written_is_parked_and_skipped_for_the_rest_of_the_run(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    poison = catalog.create_schedule(flag, T0 - timedelta(hours=1), {"enabled": True})
    others = [
        catalog.create_schedule(flag, T0 - timedelta(minutes=i), {"rollout_percentage": i})
        for i in (2, 1)
    ]
    # A value that passes every check but still cannot be recorded: here a trigger refuses
    # the poison row's history rows that carry an attempt number.
    conn.execute(
        f"""
        CREATE FUNCTION refuse_attempt() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION USING ERRCODE = '22003', MESSAGE = 'integer out of range';
        END $$;
        CREATE TRIGGER refuse_attempt BEFORE INSERT ON feature_flag_schedule_attempts
            FOR EACH ROW WHEN (NEW.schedule_id = '{poison}' AND NEW.attempt IS NOT NULL)
            EXECUTE FUNCTION refuse_attempt();
        """
    )

    summary = run_service(database_url, T0, batch_size=1)

    assert (summary.applied, summary.unrecordable) == (2, 1)
    assert [schedule_row(conn, s).status for s in others] == ["applied"] * 2
    _assert_parked(conn, poison, "its outcome could not be written: data_error")
    assert catalog.get_schedule(poison).state == "failed_permanently"


@pytest.mark.parametrize(
    ("column", "status", "moment"),
    [
        # (column, the status the row is in, the value no client can load)
        ("requeued_at", "pending", "infinity"),
        ("requeued_at", "pending", "-infinity"),
        ("scheduled_at", "pending", "-infinity"),
        ("next_retry_at", "failed", "-infinity"),
    ],
)
def test_an_unloadable_moment_neither_stops_a_run_nor_breaks_status_list_or_show(
    database_url: str,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    column: str,
    status: str,
    moment: str,
) -> None:
    flag = catalog.create_flag("banner")
    bad = catalog.create_schedule(flag, T0 - timedelta(hours=1), {"enabled": True})
    good = catalog.create_schedule(flag, T0 - timedelta(minutes=1), {"rollout_percentage": 5})
    with _check_added_after(
        conn, "feature_flag_schedules", f"ck_feature_flag_schedules_{column}_in_range"
    ):
        conn.execute(
            f"UPDATE feature_flag_schedules SET status = %s, {column} = %s::timestamptz"
            " WHERE id = %s",
            (status, moment, bad),
        )
    # What an operator sees before the run: the stored text, never a traceback.
    shown = getattr(catalog.get_schedule(bad), column)
    assert isinstance(shown, UnloadableMoment)
    assert render.when(shown) == moment
    assert render.to_jsonable(shown) == moment
    catalog.schedules()
    catalog.status(T0)

    summary = run_service(database_url, T0)

    assert schedule_row(conn, good).status == "applied"
    if column == "next_retry_at":
        # A failed row due at -infinity is processed like any retry; the outcome replaces it.
        assert schedule_row(conn, bad).status == "applied"
    else:
        assert summary.unrecordable == 1
        _assert_parked(conn, bad, f"{column} {moment} is not a representable moment")
    catalog.schedules()
    catalog.history(bad)
    catalog.status(T0)


def test_an_unloadable_run_state_or_history_time_does_not_break_status_or_show(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    schedule = catalog.create_schedule(flag, T0, {"enabled": True})
    run_service(database_url, T0)
    for table, column in (
        ("scheduler_run_state", "last_run_finished_at"),
        ("feature_flag_schedule_attempts", "finished_at"),
        ("feature_flags", "updated_at"),
    ):
        with _check_added_after(conn, table, f"ck_{table}_{column}_in_range"):
            conn.execute(f"UPDATE {table} SET {column} = 'infinity'")

    assert render.when(catalog.status(T0).last_run_finished_at) == "infinity"
    assert render.when(catalog.history(schedule)[0].finished_at) == "infinity"
    assert render.when(catalog.get_flag("banner").updated_at) == "infinity"


def test_a_ramp_stage_the_claim_finds_unrepresentable_is_parked_and_halts_its_ramp(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout")
    ramp = insert_ramp(conn, flag, T0, [5, 25])
    ((stage,),) = conn.execute(
        "SELECT id FROM feature_flag_schedules WHERE ramp_id = %s", (ramp,)
    ).fetchall()
    with _check_added_after(
        conn, "feature_flag_schedules", "ck_feature_flag_schedules_retry_count_range"
    ):
        conn.execute(
            "UPDATE feature_flag_schedules SET retry_count = %s WHERE id = %s", (INT_MAX, stage)
        )
    summary = run_service(database_url, T0, queue=frozenset({MessageKind.ALERT}))
    assert summary.unrecordable == 1
    _assert_parked(conn, stage, f"retry_count {INT_MAX} is outside")
    assert ramp_state(conn, ramp)[:3] == ("halted", 0, "unrecordable")
    (alert,) = alerts(conn)  # the halt's one alert, as for a stage failing for good
    assert (alert["ramp_id"], alert["stage"], alert["error_class"]) == (
        str(ramp),
        0,
        "unrecordable",
    )
    assert f"retry_count {INT_MAX} is outside" in alert["last_error"]
    assert [row[:2] for row in ramp_stages(conn, ramp)] == [(0, "failed")]  # no stage 1
