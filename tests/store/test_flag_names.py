"""The flag key and environment rule in the database (migration 0008): new and renamed flags
are checked, flags that predate the rule are kept and still take scheduled changes."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

from flag_scheduler.engine import limits
from flag_scheduler.errors import PermanentDatabaseError
from flag_scheduler.store.catalog import Catalog
from migrations import schema
from tests.support import T0, alembic, flag_fields, run_service, schedule_row

LEGACY = [(" padded ", "production"), ("new banner", "prod "), ("x" * 300, "")]


def test_the_migration_keeps_nonconforming_flags_and_they_still_apply(
    empty_database: str,
) -> None:
    upgraded = alembic(empty_database, "upgrade", "0005")
    assert upgraded.returncode == 0, upgraded.stderr
    with psycopg.connect(empty_database, autocommit=True) as conn:
        catalog = Catalog(conn)
        legacy = [catalog.create_flag(key, environment=env) for key, env in LEGACY]  # pre-rule
        schedules = [catalog.create_schedule(f, T0, {"enabled": True}) for f in legacy]

        upgraded = alembic(empty_database, "upgrade", "head")
        assert upgraded.returncode == 0, upgraded.stderr

        assert run_service(empty_database, T0).applied == len(LEGACY)
        assert all(schedule_row(conn, s).status == "applied" for s in schedules)
        assert all(flag_fields(conn, f)["enabled"] is True for f in legacy)
        # Renaming an old flag to a valid key is allowed (and then it is checked like any).
        first = legacy[0]
        conn.execute("UPDATE feature_flags SET flag_key = 'padded' WHERE id = %s", (first,))
        with pytest.raises(pg_errors.CheckViolation):
            conn.execute("UPDATE feature_flags SET flag_key = 'pad ded' WHERE id = %s", (first,))


@pytest.mark.parametrize(
    ("key", "environment", "constraint"),
    [
        ("", "production", "ck_feature_flags_flag_key_valid"),
        (" banner", "production", "ck_feature_flags_flag_key_valid"),
        ("banner\n", "production", "ck_feature_flags_flag_key_valid"),  # `$` is end of text
        ("k" * 129, "production", "ck_feature_flags_flag_key_valid"),
        ("bännér", "production", "ck_feature_flags_flag_key_valid"),  # ASCII only
        ("banner", "", "ck_feature_flags_environment_valid"),
        ("banner", "e" * 65, "ck_feature_flags_environment_valid"),
        ("banner", "a:b", "ck_feature_flags_environment_valid"),
    ],
)
def test_a_new_flag_breaking_the_rule_is_refused(
    conn: psycopg.Connection[Any], key: str, environment: str, constraint: str
) -> None:
    with pytest.raises(PermanentDatabaseError) as refused:
        Catalog(conn).create_flag(key, environment=environment)
    # The catalog raises our error; the driver's, with the constraint's name, is its cause.
    cause = refused.value.__cause__
    assert isinstance(cause, pg_errors.CheckViolation)
    assert cause.diag.constraint_name == constraint
    assert limits.flag_key_problem(key) or limits.environment_problem(environment)


@pytest.mark.parametrize(
    ("key", "environment"),
    [("k" * 128, "e" * 64), ("svc.checkout:v2_beta-1", "eu-west.stage_2"), ("0", "1")],
)
def test_the_database_and_python_accept_the_same_names(
    conn: psycopg.Connection[Any], key: str, environment: str
) -> None:
    Catalog(conn).create_flag(key, environment=environment)
    assert limits.flag_key_problem(key) is None
    assert limits.environment_problem(environment) is None


def test_the_installed_rule_is_the_one_in_python(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "SELECT p.prosrc FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
        " WHERE t.tgname = %s AND t.tgrelid = 'feature_flags'::regclass",
        (schema.FLAG_NAMES_TRIGGER,),
    ).fetchone()
    assert row is not None
    assert f"NEW.flag_key !~ '{schema.FLAG_KEY_REGEX}'" in row[0]
    assert f"NEW.environment !~ '{schema.ENVIRONMENT_REGEX}'" in row[0]
