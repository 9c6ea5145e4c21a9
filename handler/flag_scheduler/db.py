"""Opening PostgreSQL connections the way the scheduler needs them."""

from __future__ import annotations

import contextlib
import re
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

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
        # A reachable server's refusal names host and user only, but a string libpq cannot
        # parse is quoted whole in the message, password included: scrub before anyone sees.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        message = scrub(first_line, url)
    # Raised outside the except block: the driver's error, password and all, must not even
    # ride along as a suppressed __context__ for an error reporter to print.
    raise DatabaseUnavailable(f"cannot connect to the database: {message}")


# `user:password@` in anything URL-like (even with a scheme libpq does not recognise), and
# `password=...` in a key/value connection string, quoted or not.
_URL_PASSWORD = re.compile(r"[^:/@\s]*:([^@\s]+)@")
_KEYWORD_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def scrub(text: str, url: str) -> str:
    """`text` with the connection string and any password in it replaced by `***`."""
    secrets = {url.strip()}
    secrets.update(match.group(1) for match in _URL_PASSWORD.finditer(url))
    secrets.update(match.group(1).strip("'") for match in _KEYWORD_PASSWORD.finditer(url))
    with contextlib.suppress(ValueError):
        secrets.add(urlsplit(url).password or "")
    with contextlib.suppress(psycopg.Error):
        secrets.add(str(conninfo_to_dict(url).get("password") or ""))
    secrets |= {unquote(secret) for secret in secrets}
    # Longest first, so a password inside the whole URL does not leave the URL's rest behind.
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
