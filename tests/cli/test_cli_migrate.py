"""`flag-scheduler migrate` against DATABASE_URL must really migrate that database."""

from __future__ import annotations

import psycopg

from tests.support import run_cli
from tests.system import audit


def test_migrate_with_database_url_creates_the_schema(empty_database: str) -> None:
    result = run_cli("migrate", env=audit.invoke_env(empty_database))
    assert result.returncode == 0, result.stderr
    with psycopg.connect(empty_database) as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables")}
    assert {"alembic_version", "feature_flags", "feature_flag_schedules"} <= tables, result.stdout
