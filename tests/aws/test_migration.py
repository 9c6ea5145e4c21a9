"""The migration function: alembic upgrade head through the secret (moto), idempotent."""

from __future__ import annotations

import pytest

from flag_scheduler.aws import migration
from flag_scheduler.aws.secrets import RDS_CA_BUNDLE
from flag_scheduler.errors import ConfigurationError
from flag_scheduler_cli.local import FakeLambdaContext
from tests.aws.conftest import create_secret, rds_secret_document
from tests.support import public_tables

pytestmark = pytest.mark.usefixtures("aws")


def test_migrates_an_empty_database_through_the_secret(
    monkeypatch: pytest.MonkeyPatch, empty_database: str
) -> None:
    monkeypatch.setenv("DB_SECRET_ARN", create_secret(rds_secret_document(empty_database)))
    monkeypatch.delenv("DATABASE_URL", raising=False)

    first = migration.lambda_handler({}, FakeLambdaContext(function_name="migrations"))
    assert first["status"] == "ok"
    assert first["from_revision"] is None
    assert first["to_revision"] is not None
    assert {"feature_flags", "feature_flag_schedules", "alembic_version"} <= public_tables(
        empty_database
    )

    again = migration.lambda_handler({}, FakeLambdaContext(function_name="migrations"))
    assert again == {
        "status": "ok",
        "from_revision": first["to_revision"],
        "to_revision": first["to_revision"],
    }


def test_url_from_the_secret_requires_tls_and_bounds_lock_waits(empty_database: str) -> None:
    arn = create_secret(rds_secret_document(empty_database, password="p@ss/%"))
    url = migration.sqlalchemy_url({"DB_SECRET_ARN": arn})
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    assert parsed.drivername == "postgresql+psycopg"
    assert parsed.password == "p@ss/%"
    assert parsed.query["sslmode"] == "verify-full"
    assert parsed.query["options"] == f"-c lock_timeout={migration.LOCK_TIMEOUT_MS}"


def test_url_to_a_network_host_verifies_tls_and_refuses_cleartext_passwords() -> None:
    arn = create_secret(
        {"host": "flags.abc123.eu-west-1.rds.amazonaws.com", "username": "u", "password": "p"}
    )
    from sqlalchemy.engine import make_url

    query = make_url(migration.sqlalchemy_url({"DB_SECRET_ARN": arn})).query
    assert query["sslmode"] == "verify-full"
    assert query["sslrootcert"] == str(RDS_CA_BUNDLE)
    assert RDS_CA_BUNDLE.is_file()
    assert query["require_auth"] == "scram-sha-256"
    assert query["channel_binding"] == "prefer"


def test_without_secret_or_url_it_says_what_to_set() -> None:
    with pytest.raises(ConfigurationError, match="DB_SECRET_ARN or DATABASE_URL must be set"):
        migration.sqlalchemy_url({})


def test_a_failing_migration_raises_and_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    monkeypatch.delenv("DB_SECRET_ARN", raising=False)
    with pytest.raises(migration.MigrationFailed, match="alembic upgrade head failed"):
        migration.lambda_handler({}, FakeLambdaContext(function_name="migrations"))
    assert [r.message for r in caplog.records] == ["migration_failed"]
