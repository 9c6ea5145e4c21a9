"""The one Alembic runner: the CLI (local.migrate) and the migration function upgrade here.

The Alembic configuration is built in code rather than read from alembic.ini, and the
migrations are found as the importable `migrations` package, so the same call works in a
checkout, in an installed wheel (`pipx install`, `uv tool install`) and in the migration
function's zip. alembic.ini stays for developers running the `alembic` command itself.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from flag_scheduler.errors import ConfigurationError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_PACKAGE = "migrations"


def migrations_folder() -> Path:
    """The folder of the importable `migrations` package (env.py and versions/).

    Raises:
        ConfigurationError: the package is missing, or is some other `migrations` package.
    """
    try:
        folder = Path(str(resources.files(MIGRATIONS_PACKAGE)))
    except ModuleNotFoundError:
        folder = None
    # A bare `migrations` name can belong to another project on sys.path: check it is ours.
    if folder is None or not (folder / "env.py").is_file() or not (folder / "versions").is_dir():
        raise ConfigurationError(
            f"the {MIGRATIONS_PACKAGE} package (env.py and versions/) is not installed"
            " beside flag_scheduler; reinstall flag-scheduler (pip install 'flag-scheduler[cli]')"
        )
    return folder


def driver_url(url: str) -> str:
    """`url` with the driver SQLAlchemy needs named; plain postgresql:// URLs are accepted
    because every other tool (psql, the scheduler) uses them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def alembic_config(url: str) -> Config:
    """An Alembic Config for the installed migrations, migrating `url`.

    The URL travels as `-x url=` (read by migrations/env.py): out of os.environ, and out of
    ConfigParser interpolation, where a '%' in a password would break.
    """
    # Deferred: the scheduler's zip holds this module but not alembic or sqlalchemy.
    from alembic.config import Config

    config = Config()
    # Options do go through ConfigParser interpolation: a '%' in the folder must be doubled.
    config.set_main_option("script_location", str(migrations_folder()).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.cmd_opts = argparse.Namespace(x=[f"url={url}"])
    return config


def upgrade(url: str, *, sql: bool = False) -> None:
    """`alembic upgrade head` against `url`; with `sql`, print the SQL instead (offline mode).

    Errors are Alembic's and SQLAlchemy's own: each caller says them its way.
    """
    # Deferred: the scheduler's zip holds this module but not alembic or sqlalchemy.
    from alembic import command

    command.upgrade(alembic_config(url), "head", sql=sql)


def current_revision(url: str) -> str | None:
    """The revision the database at `url` is at (None before the first migration)."""
    # Deferred: the scheduler's zip holds this module but not alembic or sqlalchemy.
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, pool

    engine = create_engine(driver_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            revision: str | None = MigrationContext.configure(connection).get_current_revision()
            return revision
    finally:
        engine.dispose()
