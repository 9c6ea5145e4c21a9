"""The API under test: its database is the test's fresh one, its clock stopped at T0."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flag_scheduler.api import runtime
from tests.support import T0


@pytest.fixture
def api(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point the API at the test's database; yields the database URL."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    for name in ("DB_SECRET_ARN", "DB_HOST", "DB_NAME"):
        monkeypatch.delenv(name, raising=False)
    runtime.reset()
    runtime.set_clock(lambda: T0)
    yield database_url
    runtime.reset()
