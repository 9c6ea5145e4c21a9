"""Opening PostgreSQL connections the way the scheduler needs them, and the one translation
of the driver's errors into ours (for the engine's repository and the operators' catalog)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from flag_scheduler.engine.states import ErrorClass
from flag_scheduler.errors import (
    DatabaseLoginRefused,
    DatabaseUnavailable,
    FlagSchedulerError,
    PermanentDatabaseError,
    TransientDatabaseError,
    first_line,
)

APPLICATION_NAME = "flag-scheduler"


@dataclass(frozen=True)
class TcpLiveness:
    """How soon a TCP connection whose peer vanished (an RDS failover) is declared dead.

    libpq ignores these on Unix sockets.
    """

    # An idle connection is probed after this many seconds of silence ...
    keepalives_idle: int = 10
    # ... then every this many seconds, and given up after this many unanswered probes.
    keepalives_interval: int = 5
    keepalives_count: int = 3
    # Sent data unacknowledged this long (a query sent into a black hole) fails the
    # connection; Linux also applies it to keepalive probes, so it bounds both cases.
    tcp_user_timeout_ms: int = 10_000

    def params(self) -> dict[str, Any]:
        return {
            "keepalives": 1,
            "keepalives_idle": self.keepalives_idle,
            "keepalives_interval": self.keepalives_interval,
            "keepalives_count": self.keepalives_count,
            "tcp_user_timeout": self.tcp_user_timeout_ms,
        }


def connect(
    url: str,
    *,
    connect_timeout: int = 10,
    application_name: str = APPLICATION_NAME,
    liveness: TcpLiveness | None = None,
) -> psycopg.Connection[Any]:
    """Open an autocommit connection (transactions are opened explicitly).

    Server-side prepared statements are off: RDS Proxy pins a session that prepares one.
    TCP keepalives and a user timeout make a half-open connection fail in seconds instead
    of hanging until the Lambda timeout.

    Raises:
        DatabaseLoginRefused: the server refused the credentials, or the client refused the
            server (its certificate, or the authentication method it asked for).
        DatabaseUnavailable: the server cannot be reached.
    """
    try:
        return psycopg.connect(
            url,
            autocommit=True,
            prepare_threshold=None,
            application_name=application_name,
            connect_timeout=connect_timeout,
            **(liveness or TcpLiveness()).params(),
        )
    except psycopg.Error as exc:
        # A reachable server's refusal names host and user only, but a string libpq cannot
        # parse is quoted whole in the message, password included: scrub before anyone sees.
        message = scrub(first_line(exc), url)
    # Raised outside the except block: the driver's error, password and all, must not even
    # ride along as a suppressed __context__ for an error reporter to print.
    if login_refused(message):
        raise DatabaseLoginRefused(f"the database login was refused: {message}")
    raise DatabaseUnavailable(f"cannot connect to the database: {message}")


# SQLSTATEs a later attempt can get past, by the name we record them under.
_TRANSIENT_SQLSTATES = {
    "40001": ErrorClass.SERIALIZATION_FAILURE,
    "40P01": ErrorClass.DEADLOCK,
    "55P03": ErrorClass.LOCK_TIMEOUT,
    "57014": ErrorClass.STATEMENT_TIMEOUT,
}
# SQLSTATE classes that mean the data itself is wrong: 22 data exception, 23 integrity.
_PERMANENT_SQLSTATE_CLASSES = {"22": ErrorClass.DATA_ERROR, "23": ErrorClass.INTEGRITY_ERROR}


def translate_error(exc: psycopg.Error, conn: psycopg.Connection[Any]) -> FlagSchedulerError:
    """Map a psycopg error on `conn` to our own exception class, with a one-line message."""
    sqlstate = exc.sqlstate or ""
    message = (exc.diag.message_primary or first_line(exc)).strip()
    if conn.broken or conn.closed or isinstance(exc, pg_errors.AdminShutdown):
        return DatabaseUnavailable(f"database connection lost: {message}")
    if sqlstate.startswith("08"):
        return DatabaseUnavailable(f"database connection lost: {message}")
    if sqlstate in _TRANSIENT_SQLSTATES:
        return TransientDatabaseError(message, error_class=_TRANSIENT_SQLSTATES[sqlstate])
    if sqlstate[:2] in _PERMANENT_SQLSTATE_CLASSES:
        return PermanentDatabaseError(
            message, error_class=_PERMANENT_SQLSTATE_CLASSES[sqlstate[:2]]
        )
    return TransientDatabaseError(message, error_class=ErrorClass.UNKNOWN)


@contextlib.contextmanager
def translated(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Raise a driver error on `conn` as translate_error's class (the driver's error as
    __cause__, so a caller can still read its SQLSTATE)."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate_error(exc, conn) from exc


# libpq reports these without a SQLSTATE: the server's FATAL text (28P01, 28000) or the
# client's own refusal of the server (require_auth, channel_binding, certificate checks).
_LOGIN_REFUSED = re.compile(
    r"password authentication failed"
    r"|no pg_hba\.conf entry"
    r'|role "[^"]*" does not exist'
    r"|fe_sendauth: no password supplied"
    r"|authentication method requirement"
    r"|channel binding"
    r"|certificate verify failed"
    r"|does not match host name"
    r"|root certificate file"
    r"|server does not support SSL, but SSL was required",
    re.IGNORECASE,
)


def login_refused(message: str) -> bool:
    """Whether a connection failure is a refused login (configuration), not an outage."""
    return _LOGIN_REFUSED.search(message) is not None


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
