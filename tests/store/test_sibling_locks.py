"""Flag locks between runs: who holds a flag, as a waiting run finds out, and what it charges."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.types.json import Jsonb

from flag_scheduler.errors import TransientDatabaseError
from flag_scheduler.store import connection
from flag_scheduler.store.catalog import Catalog
from flag_scheduler.store.repository import ScheduleRepository
from tests.support import T0, history, run_service, schedule_row


@contextmanager
def _session(database_url: str, name: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True, application_name=name) as conn:
        yield conn


@contextmanager
def _run_holding(database_url: str, flag: UUID, *, write: bool) -> Iterator[int]:
    """A run's transaction holding the flag as a run does: locked at the top level, and
    (with `write`) written in a savepoint since released. Yields its backend pid."""
    with _session(database_url, connection.APPLICATION_NAME) as conn, conn.transaction():
        repository = ScheduleRepository(conn)
        assert flag in repository.lock_free_flags([flag])
        if write:
            with repository.savepoint():
                conn.execute("UPDATE feature_flags SET enabled = true WHERE id = %s", (flag,))
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert pid is not None
        yield pid[0]


def _holders(database_url: str, flag: UUID) -> list[tuple[str, bool]]:
    with _session(database_url, "observer") as conn:
        holders = ScheduleRepository(conn).flag_lock_holders(flag)
    return [(h.application_name, h.is_scheduler) for h in holders]


@pytest.mark.parametrize("write", [False, True], ids=["locked", "locked-and-written"])
def test_a_run_holding_a_flag_shows_as_a_run(
    database_url: str, catalog: Catalog, write: bool
) -> None:
    flag = catalog.create_flag("banner")
    with _run_holding(database_url, flag, write=write):
        assert _holders(database_url, flag) == [(connection.APPLICATION_NAME, True)]
    assert _holders(database_url, flag) == []  # committed: nobody


def test_a_writer_adding_a_schedule_beside_a_run_does_not_hide_the_run(
    database_url: str, catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    with (
        _run_holding(database_url, flag, write=False),
        _session(database_url, "writer") as writer,
        writer.transaction(),
    ):
        # The foreign key takes KEY SHARE on the flag: the row's lockers become a
        # multixact, of which only the run blocks another run.
        writer.execute(
            "INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates)"
            " VALUES (%s, %s, %s)",
            (flag, T0, Jsonb({"enabled": True})),
        )
        assert _holders(database_url, flag) == [(connection.APPLICATION_NAME, True)]


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT 1 FROM feature_flags WHERE id = %s FOR UPDATE",
        "UPDATE feature_flags SET rollout_percentage = 5 WHERE id = %s",
    ],
    ids=["locked", "updated"],
)
def test_an_application_holding_a_flag_shows_as_an_application(
    database_url: str, catalog: Catalog, statement: str
) -> None:
    flag = catalog.create_flag("banner")
    with _session(database_url, "orders-service") as app, app.transaction():
        app.execute(statement, (flag,))
        assert _holders(database_url, flag) == [("orders-service", False)]


def test_waiting_for_a_flag_keeps_no_lock_and_times_out_while_it_is_held(
    database_url: str, catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    with _session(database_url, connection.APPLICATION_NAME) as conn:
        repository = ScheduleRepository(conn)
        with repository.transaction(
            lock_timeout_ms=100, statement_timeout_ms=5_000, idle_in_transaction_timeout_ms=60_000
        ):
            assert repository.wait_for_flag(flag) is True
            # Free for anyone else, though the transaction is still open.
            with _session(database_url, "orders-service") as app, app.transaction():
                app.execute("SELECT 1 FROM feature_flags WHERE id = %s FOR UPDATE NOWAIT", (flag,))
                with pytest.raises(TransientDatabaseError) as waited:
                    repository.wait_for_flag(flag)
                with pytest.raises(TransientDatabaseError) as tried:
                    repository.wait_for_flag(flag, nowait=True)
            assert repository.wait_for_flag(UUID(int=1)) is False  # no such flag
    assert (waited.value.error_class, tried.value.error_class) == ("lock_timeout", "lock_timeout")


def test_an_application_lock_hidden_in_a_released_savepoint_is_still_charged(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    schedule = catalog.create_schedule(flag, T0, {"enabled": True})
    with _session(database_url, "orders-service") as app, app.transaction():
        app.execute("SELECT 1")
        with app.transaction():  # the row's xmax names a subtransaction no lock shows
            app.execute("SELECT 1 FROM feature_flags WHERE id = %s FOR NO KEY UPDATE", (flag,))
        assert _holders(database_url, flag) == []
        summary = run_service(database_url, T0, lock_timeout_ms=100)

    row = schedule_row(conn, schedule)
    assert (row.status, row.retry_count, summary.retried) == ("failed", 1, 1)
    assert history(conn, schedule) == [(1, "retry_scheduled", "lock_timeout")]


def test_a_wait_the_time_budget_would_cut_short_is_not_started_and_charges_nothing(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    schedule = catalog.create_schedule(flag, T0, {"enabled": True})
    with _session(database_url, "orders-service") as app, app.transaction():
        app.execute("SELECT 1 FROM feature_flags WHERE id = %s FOR NO KEY UPDATE", (flag,))
        # 1.5 s left past the 1 s margin: less than the 2 s lock timeout.
        summary = run_service(database_url, T0, lock_timeout_ms=2_000, remaining_ms=lambda: 2_500)

    assert summary.stopped_for_time
    assert (summary.claimed, summary.retried) == (0, 0)
    assert schedule_row(conn, schedule).retry_count == 0
    assert history(conn, schedule) == []
