"""Fixtures of the CLI's tests."""

from __future__ import annotations

import pytest

from tests.support import Cli


@pytest.fixture
def cli(database_url: str) -> Cli:
    """The console script, on this test's database."""
    return Cli(database_url)
