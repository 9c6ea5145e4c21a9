"""Rows become records by column name: a SELECT's column order cannot shift a value into
the wrong field, and a column that names no field fails loudly."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from flag_scheduler.engine.states import ErrorClass, Outcome, State, Status, by_value
from flag_scheduler.store.catalog import Catalog
from flag_scheduler.store.repository import ScheduleRepository
from flag_scheduler.store.rows import record_row
from tests.support import T0, run_service


@dataclass(frozen=True, slots=True)
class Pair:
    first: str
    second: str
    third: int = 3


def _fetch(conn: psycopg.Connection[Any], query: str, **convert: Any) -> list[Pair]:
    cursor = conn.cursor(row_factory=record_row(Pair, **convert))
    return cursor.execute(query).fetchall()


def test_columns_go_to_the_fields_of_their_names_in_any_order(
    conn: psycopg.Connection[Any],
) -> None:
    assert _fetch(conn, "SELECT 'b' AS second, 1 AS third, 'a' AS first") == [Pair("a", "b", 1)]
    # The fields a query leaves out keep their defaults.
    assert _fetch(conn, "SELECT 'b' AS second, 'a' AS first") == [Pair("a", "b")]
    assert _fetch(conn, "SELECT 'a' AS first, 'b' AS second", second=str.upper) == [Pair("a", "B")]


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("SELECT 'a' AS first, 'b' AS scond", "column scond names no field"),  # a typo
        ("SELECT 'a' AS first, 1 AS third", "field second has no column"),  # a gap
        ("SELECT 'a' AS first, 'b' AS first", "column first comes twice"),
    ],
)
def test_a_column_that_fits_no_field_fails_loudly(
    conn: psycopg.Connection[Any], query: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        _fetch(conn, query)


def test_records_read_back_carry_enum_members(
    conn: psycopg.Connection[Any], catalog: Catalog, database_url: str
) -> None:
    flag = catalog.create_flag("checkout")
    schedule_id = catalog.create_schedule(flag, T0, {"enabled": True})
    with conn.transaction():
        [due] = ScheduleRepository(conn).claim_due(T0, 10)
    # (A claimed row carries no status: the engine never read it.)
    assert (due.id, due.scheduled_at) == (schedule_id, T0)
    catalog.create_schedule(flag, T0 + timedelta(seconds=1), {"nope": 1})
    run_service(database_url, T0 + timedelta(seconds=2))
    views = {view.id: view for view in catalog.schedules()}
    assert views[schedule_id].status is Status.APPLIED
    assert views[schedule_id].state is State.APPLIED
    [invalid] = [view for view in views.values() if view.id != schedule_id]
    assert invalid.last_error_class is ErrorClass.INVALID_UPDATES
    assert invalid.state is State.FAILED_PERMANENTLY
    [entry] = catalog.history(invalid.id)
    assert (entry.outcome, entry.error_class) == (
        Outcome.FAILED_PERMANENTLY,
        ErrorClass.INVALID_UPDATES,
    )
    assert by_value(Status)["failed"] is Status.FAILED
