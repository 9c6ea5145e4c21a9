"""What the API builds once per container (settings) and once per thread (its connection)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg

from flag_scheduler.aws.secrets import connect_database
from flag_scheduler.aws.settings import ApiSettings


def utc_now() -> datetime:
    return datetime.now(UTC)


class _Shared:
    """Container-wide state: settings, and the clock (tests replace it)."""

    settings: ApiSettings | None = None
    clock: Callable[[], datetime] = staticmethod(utc_now)


class _PerThread(threading.local):
    # One connection per thread: a transaction must never interleave with another request's
    # statements, and a local server may run requests on several threads (Lambda runs one).
    connection: psycopg.Connection[Any] | None = None
    connected_at: float = 0.0


_shared = _Shared()
_thread = _PerThread()


def now() -> datetime:
    """The current time, as the API's handlers must read it."""
    return _shared.clock()


def set_clock(clock: Callable[[], datetime]) -> None:
    _shared.clock = clock


def settings() -> ApiSettings:
    if _shared.settings is None:
        _shared.settings = ApiSettings.from_env(os.environ)
    return _shared.settings


def connection(monotonic: Callable[[], float] = time.monotonic) -> psycopg.Connection[Any]:
    """This thread's connection: the cached one while it is usable and young enough, else a
    new one (DATABASE_URL, or the secret in AWS).

    Raises:
        ConfigurationError: no database is configured, or the secret is unusable.
        DatabaseLoginRefused, DatabaseUnavailable: as connect_database.
    """
    conn = _thread.connection
    max_age = settings().connection_max_age_seconds
    usable = conn is not None and not conn.closed and not conn.broken
    if usable and monotonic() - _thread.connected_at < max_age:
        assert conn is not None
        return conn
    if conn is not None:
        conn.close()
    _thread.connection = None
    _thread.connection = connect_database(settings())
    _thread.connected_at = monotonic()
    return _thread.connection


def reset() -> None:
    """Forget settings, the clock and this thread's connection (tests, local runs)."""
    if _thread.connection is not None:
        _thread.connection.close()
    _thread.connection = None
    _thread.connected_at = 0.0
    _shared.settings = None
    _shared.clock = utc_now
