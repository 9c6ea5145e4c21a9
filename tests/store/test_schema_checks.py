"""The CHECKs migrations/schema.py builds from the enums are the ones the migrations installed.

Alembic's compare_metadata does not compare CHECK constraints, so a value added to, renamed
in or reordered in Status, Outcome, ErrorClass or MessageKind would otherwise go unnoticed
until the database refused a row the code wrote.
"""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import create_engine, pool

from migrations.schema import metadata

CHECKS = """
SELECT conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
FROM pg_constraint
WHERE contype = 'c' AND connamespace = 'public'::regnamespace
"""


def _checks(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute(CHECKS).fetchall())


def test_the_checks_built_from_the_enums_are_those_the_migrations_installed(
    database_url: str, empty_database: str
) -> None:
    engine = create_engine(
        "postgresql+psycopg://" + empty_database.removeprefix("postgresql://"),
        poolclass=pool.NullPool,
    )
    metadata.create_all(engine)
    engine.dispose()
    built, migrated = _checks(empty_database), _checks(database_url)
    assert "feature_flag_schedules.ck_feature_flag_schedules_status_valid" in built
    assert built == migrated
