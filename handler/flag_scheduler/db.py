"""Opening PostgreSQL connections the way the scheduler needs them."""

from __future__ import annotations

from typing import Any

import psycopg

from flag_scheduler.errors import DatabaseUnavailable

APPLICATION_NAME = "flag-scheduler"


def connect(
    url: str, *, connect_timeout: int = 10, application_name: str = APPLICATION_NAME
) -> psycopg.Connection[Any]:
    """Open an autocommit connection (transactions are opened explicitly).

    Server-side prepared statements are off: RDS Proxy pins a session that prepares one.

    Raises:
        DatabaseUnavailable: the server cannot be reached or refuses the login.
    """
    try:
        return psycopg.connect(
            url,
            autocommit=True,
            prepare_threshold=None,
            application_name=application_name,
            connect_timeout=connect_timeout,
        )
    except psycopg.Error as exc:
        # The driver's message names host and user but never the password.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(f"cannot connect to the database: {first_line}") from None
