"""Migration function: `alembic upgrade head` against the database the scheduler uses.

Deployed as its own Lambda function (MigrationFunction) and invoked once after each
`sam deploy` (`sam remote invoke MigrationFunction`); the schedule never runs it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from sqlalchemy.engine import URL

from flag_scheduler.aws.secrets import database_target
from flag_scheduler.aws.settings import MigrationSettings, check_powertools_environment
from flag_scheduler.errors import ConfigurationError, FlagSchedulerError, first_line
from flag_scheduler.store import alembic_runner

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

# As in scheduler.py: a bad Powertools variable fails the start with a line naming it.
check_powertools_environment(os.environ)
logger = Logger(service="flag-scheduler-migrations")
# Alembic reports each revision it runs through the standard library's "alembic" logger.
# Only that one: the scheduler's handler formats the flag_scheduler loggers.
copy_config_to_registered_loggers(source_logger=logger, include={"alembic"})

# DDL waiting behind a scheduler transaction would block every later statement on the
# table; give up instead, and let the operator invoke again.
LOCK_TIMEOUT_MS = 15_000


class MigrationFailed(FlagSchedulerError):
    """alembic upgrade head failed; the database stays at the last completed revision."""


def sqlalchemy_url(environ: Mapping[str, str]) -> str:
    """The URL to migrate: built from the secret in AWS, else DATABASE_URL.

    Raises:
        ConfigurationError: neither is set, or the secret is unusable.
    """
    settings = MigrationSettings.from_env(environ)
    if settings.db_secret_arn is None:
        if settings.database_url is None:
            secret, url = (settings.alias(f) for f in ("db_secret_arn", "database_url"))
            raise ConfigurationError(f"{secret} or {url} must be set")
        return settings.database_url
    target = database_target(settings)
    query = {
        # Verified TLS and no cleartext password, as the scheduler connects.
        **target.security_params(),
        "connect_timeout": "10",
        "application_name": "flag-scheduler-migrations",
        "options": f"-c lock_timeout={LOCK_TIMEOUT_MS}",
    }
    # A Unix-socket directory (a local server) cannot be the URL's host part.
    socket_dir = target.is_socket
    if socket_dir:
        query["host"] = target.host
    return URL.create(
        "postgresql+psycopg",
        username=target.user,
        password=target.password,
        host=None if socket_dir else target.host,
        port=target.port,
        database=target.dbname,
        query=query,
    ).render_as_string(hide_password=False)


def upgrade_head(url: str) -> dict[str, str | None]:
    """Run `alembic upgrade head`; returns the revisions before and after.

    Raises:
        ConfigurationError: the migrations package is not packaged with the function.
        MigrationFailed: a revision failed (its transaction is rolled back).
    """
    try:
        before = alembic_runner.current_revision(url)
        alembic_runner.upgrade(url)
        after = alembic_runner.current_revision(url)
    except FlagSchedulerError:
        raise
    except Exception as exc:
        raise MigrationFailed(
            f"alembic upgrade head failed: {type(exc).__name__}: {first_line(exc)}"
        ) from exc
    return {"from_revision": before, "to_revision": after}


@logger.inject_lambda_context
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    """Bring the database to the newest schema; the event is ignored."""
    try:
        result = upgrade_head(sqlalchemy_url(os.environ))
    except FlagSchedulerError as exc:
        logger.error(
            "migration_failed", extra={"error_class": type(exc).__name__, "error": str(exc)}
        )
        raise
    logger.info("migration_completed", extra=result)
    return {"status": "ok", **result}
