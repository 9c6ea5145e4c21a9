"""The API under test: its database is the test's fresh one, its clock stopped at T0."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from flag_scheduler.api import runtime
from tests.support import T0, as_api_role

# Set to 1 (CI's PostgreSQL 15 pass does), the API connects as a role with only
# docs/api-role.sql's grants; the tests' own connections stay the owner's.
AS_API_ROLE = os.environ.get("FLAG_SCHEDULER_TEST_API_ROLE") == "1"


@pytest.fixture
def api(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point the API at the test's database; yields the database URL (the owner's)."""
    with ExitStack() as stack:
        api_url = stack.enter_context(as_api_role(database_url)) if AS_API_ROLE else database_url
        monkeypatch.setenv("DATABASE_URL", api_url)
        for name in ("DB_SECRET_ARN", "DB_HOST", "DB_NAME"):
            monkeypatch.delenv(name, raising=False)
        runtime.reset()
        runtime.set_clock(lambda: T0)
        yield database_url
        runtime.reset()
