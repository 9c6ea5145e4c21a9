"""Database credentials from an RDS-format Secrets Manager secret, read through Powertools."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from flag_scheduler.aws.settings import DatabaseSettings
from flag_scheduler.errors import (
    ConfigurationError,
    DatabaseLoginRefused,
    DatabaseUnavailable,
    first_line,
)
from flag_scheduler.store.connection import connect

DEFAULT_PORT = 5432
DEFAULT_DBNAME = "postgres"
# The variables named in messages, as the settings spell them.
_DATABASE_URL, _DB_SECRET_ARN, _DB_HOST, _DB_NAME = (
    DatabaseSettings.alias(field)
    for field in ("database_url", "db_secret_arn", "db_host", "db_name")
)
# The Amazon RDS global CA bundle plus the Amazon Trust Services roots that RDS Proxy's
# certificates chain to; shipped in the package (README: "Refreshing the CA bundle").
RDS_CA_BUNDLE = Path(__file__).with_name("rds-ca-bundle.pem")
# Verify the chain and the host name: `require` encrypts but would hand the password to
# any server presenting any certificate.
SSLMODE = "verify-full"
# Never send a password in clear or as an MD5 hash, whatever the server asks for.
REQUIRE_AUTH = "scram-sha-256"
# `prefer`, not `require`: RDS Proxy does not offer channel binding in every configuration;
# a verify-full connection has already authenticated the server.
CHANNEL_BINDING = "prefer"


@dataclass(frozen=True)
class DatabaseTarget:
    """Where and as whom to connect; repr hides the password."""

    host: str
    port: int
    user: str
    password: str
    dbname: str
    sslmode: str = SSLMODE
    sslrootcert: str = str(RDS_CA_BUNDLE)

    def __repr__(self) -> str:
        return (
            f"DatabaseTarget(host={self.host!r}, port={self.port}, user={self.user!r},"
            f" dbname={self.dbname!r}, sslmode={self.sslmode!r})"
        )

    @property
    def is_socket(self) -> bool:
        """A Unix-socket directory: a server on this machine (tests, local runs)."""
        return self.host.startswith("/")

    def security_params(self) -> dict[str, str]:
        """TLS and authentication settings for libpq (the scheduler and migrations alike).

        Over a Unix socket libpq uses no TLS whatever sslmode says, and a local server
        may trust the socket without asking for any password: require_auth would refuse
        that, so it applies to network hosts only (every host in AWS).
        """
        params = {
            "sslmode": self.sslmode,
            "sslrootcert": self.sslrootcert,
            "channel_binding": CHANNEL_BINDING,
        }
        if not self.is_socket:
            params["require_auth"] = REQUIRE_AUTH
        return params

    def conninfo(self) -> str:
        """A libpq connection string (quoting handled by psycopg)."""
        return make_conninfo(
            host=self.host,
            port=str(self.port),
            user=self.user,
            password=self.password,
            dbname=self.dbname,
            **self.security_params(),
        )


class _Provider:
    """The container's one Secrets Manager provider (Powertools caches values per provider)."""

    instance: Any = None


def reset_cache() -> None:
    """Forget the provider and its cached secrets (tests, local runs)."""
    _Provider.instance = None


def read_secret(settings: DatabaseSettings, *, force_fetch: bool = False) -> Mapping[str, Any]:
    """The secret's JSON document, cached by Powertools for `db_secret_max_age_seconds`.

    Raises:
        ConfigurationError: DB_SECRET_ARN is unset, or the secret is unreadable or not JSON.
    """
    if settings.db_secret_arn is None:
        raise ConfigurationError(f"{_DB_SECRET_ARN} is not set")
    # Imported here: Parameters imports boto3, which a run without a secret never needs.
    from aws_lambda_powertools.utilities import parameters
    from botocore.config import Config  # type: ignore[import-untyped]

    if _Provider.instance is None:
        # Short timeouts: without a VPC endpoint or NAT route the SDK's defaults (60 s per
        # try) would spend the whole invocation before saying why.
        _Provider.instance = parameters.SecretsProvider(
            boto_config=Config(
                connect_timeout=5, read_timeout=10, retries={"mode": "standard", "max_attempts": 3}
            )
        )
    try:
        document = _Provider.instance.get(
            settings.db_secret_arn,
            transform="json",
            max_age=settings.db_secret_max_age_seconds,
            force_fetch=force_fetch,
        )
    except parameters.exceptions.TransformParameterError:
        raise ConfigurationError(
            f"secret {settings.db_secret_arn} is not a JSON document"
            " (expected the RDS format: host, port, username, password, dbname)"
        ) from None
    except parameters.exceptions.GetParameterError as exc:
        # Powertools wraps the SDK error; its text names the API error, never the value.
        raise ConfigurationError(
            f"cannot read secret {settings.db_secret_arn}: {first_line(exc)}"
        ) from None
    if not isinstance(document, dict):
        raise ConfigurationError(f"secret {settings.db_secret_arn} is not a JSON object")
    return document


def target_from_secret(settings: DatabaseSettings, document: Mapping[str, Any]) -> DatabaseTarget:
    """Combine the secret with the DB_HOST and DB_NAME overrides.

    RDS-managed master secrets hold only username and password; the host then comes from
    DB_HOST. DB_HOST also points the function at an RDS Proxy endpoint.

    Raises:
        ConfigurationError: a required key is missing or has the wrong type.
    """
    arn = settings.db_secret_arn
    user = _text(document, "username", arn)
    # Present but empty is allowed: a server with trust or peer authentication needs none.
    password = "" if document.get("password") == "" else _text(document, "password", arn)
    host = settings.db_host or _optional_text(document, "host", arn)
    if host is None:
        raise ConfigurationError(f"secret {arn} has no 'host'; set {_DB_HOST}")
    dbname = settings.db_name or _optional_text(document, "dbname", arn) or DEFAULT_DBNAME
    return DatabaseTarget(
        host=host, port=_port(document, arn), user=user, password=password, dbname=dbname
    )


def database_target(settings: DatabaseSettings, *, force_fetch: bool = False) -> DatabaseTarget:
    """Read the secret (cached) and build the connection target.

    Raises:
        ConfigurationError: as read_secret and target_from_secret.
    """
    return target_from_secret(settings, read_secret(settings, force_fetch=force_fetch))


def connect_database(
    settings: DatabaseSettings,
    *,
    open_connection: Callable[[str], psycopg.Connection[Any]] = connect,
) -> psycopg.Connection[Any]:
    """Connect through the secret when DB_SECRET_ARN is set, else to DATABASE_URL.

    With the secret, a refused login may mean the password was rotated since it was cached:
    read it again, and try once more only if it changed.

    Raises:
        ConfigurationError: neither or both are set, or the secret is unusable.
        DatabaseLoginRefused: the login is refused, with the secret read afresh too.
        DatabaseUnavailable: the database cannot be reached.
    """
    database_url = settings.database_url
    if settings.db_secret_arn is None:
        if not database_url:
            raise ConfigurationError(
                f"{_DATABASE_URL} must be set to a PostgreSQL connection URL,"
                f" or {_DB_SECRET_ARN} to an RDS-format secret"
            )
        return open_connection(database_url)
    if database_url:
        raise ConfigurationError(
            f"set either {_DATABASE_URL} or {_DB_SECRET_ARN}, not both"
            f" ({_DB_HOST} and {_DB_NAME} override what the secret says)"
        )
    cached = database_target(settings)
    try:
        return open_connection(cached.conninfo())
    except (DatabaseLoginRefused, DatabaseUnavailable):
        fresh = database_target(settings, force_fetch=True)
        if fresh == cached:
            raise
    return open_connection(fresh.conninfo())


def _text(document: Mapping[str, Any], key: str, arn: str | None) -> str:
    value = _optional_text(document, key, arn)
    if value is None:
        raise ConfigurationError(f"secret {arn} has no {key!r} (RDS format expected)")
    return value


def _optional_text(document: Mapping[str, Any], key: str, arn: str | None) -> str | None:
    value = document.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError(
            f"secret {arn}: {key!r} must be a string, got {type(value).__name__}"
        )
    return value


def _port(document: Mapping[str, Any], arn: str | None) -> int:
    raw = document.get("port")
    if raw is None or raw == "":
        return DEFAULT_PORT
    # RDS writes the port as a number; people writing secrets by hand often use a string.
    try:
        port = int(raw) if isinstance(raw, int | str) and not isinstance(raw, bool) else None
    except ValueError:
        port = None
    if port is None or not 1 <= port <= 65_535:
        raise ConfigurationError(f"secret {arn}: 'port' must be an integer 1..65535, got {raw!r}")
    return port
