"""The operators' catalog fails the way the scheduler's repository does: our error classes,
one line each, never a raw driver error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from flag_scheduler.engine.states import ErrorClass
from flag_scheduler.errors import DatabaseUnavailable, PermanentDatabaseError
from flag_scheduler.store import connection
from flag_scheduler.store.catalog import Catalog

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

# One call of each kind: a read, a read of one row, an insert, an operator action, status.
CALLS: dict[str, Callable[[Catalog], object]] = {
    "flags": lambda catalog: catalog.flags(),
    "get_flag": lambda catalog: catalog.get_flag("banner"),
    "create_flag": lambda catalog: catalog.create_flag("banner"),
    "cancel": lambda catalog: catalog.cancel(uuid4(), now=NOW, actor="test"),
    "status": lambda catalog: catalog.status(NOW),
}


@pytest.fixture
def own_catalog(database_url: str) -> Iterator[Catalog]:
    """A catalog on a connection of its own, for the test to close or kill."""
    own = connection.connect(database_url, application_name="catalog-under-test")
    yield Catalog(own)
    own.close()


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_a_closed_connection_is_database_unavailable_in_one_line(
    own_catalog: Catalog, call: Callable[[Catalog], object]
) -> None:
    own_catalog._conn.close()
    with pytest.raises(DatabaseUnavailable) as lost:
        call(own_catalog)
    assert str(lost.value) == "database connection lost: the connection is closed"


def test_a_terminated_session_is_database_unavailable_in_one_line(
    own_catalog: Catalog, conn: psycopg.Connection[Any]
) -> None:
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'catalog-under-test'"
    )
    with pytest.raises(DatabaseUnavailable) as lost:
        own_catalog.flags()
    message = str(lost.value)
    assert message.startswith("database connection lost: "), message
    assert "\n" not in message
    # The driver's error stays reachable for a caller that reads its SQLSTATE.
    assert isinstance(lost.value.__cause__, psycopg.Error)


def test_refused_data_is_a_permanent_database_error(catalog: Catalog) -> None:
    with pytest.raises(PermanentDatabaseError) as refused:
        catalog.create_schedule(uuid4(), NOW, {"enabled": True})  # no such flag
    assert refused.value.error_class == ErrorClass.INTEGRITY_ERROR
    assert "violates foreign key constraint" in str(refused.value)
    assert "\n" not in str(refused.value)
