"""The RDS-format secret (moto) becomes TLS connection settings; rotation; clear errors."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from flag_scheduler.aws.secrets import RDS_CA_BUNDLE, connect_database, database_target
from flag_scheduler.aws.settings import DatabaseSettings
from flag_scheduler.errors import ConfigurationError, DatabaseUnavailable
from tests.aws.conftest import client, create_secret, rds_secret_document

RDS_SECRET = {
    "engine": "postgres",
    "host": "flags.abc123.eu-west-1.rds.amazonaws.com",
    "port": 5432,
    "username": "scheduler",
    "password": "p@ss word'%",
    "dbname": "flags",
}

pytestmark = pytest.mark.usefixtures("aws")


def _settings(arn: str, **overrides: Any) -> DatabaseSettings:
    return DatabaseSettings(db_secret_arn=arn, **overrides)


def test_secret_becomes_a_tls_connection_target() -> None:
    target = database_target(_settings(create_secret(RDS_SECRET)))
    assert conninfo_to_dict(target.conninfo()) == {
        "host": "flags.abc123.eu-west-1.rds.amazonaws.com",
        "port": "5432",
        "user": "scheduler",
        "password": "p@ss word'%",
        "dbname": "flags",
        # The certificate must chain to the shipped RDS bundle and name this host ...
        "sslmode": "verify-full",
        "sslrootcert": str(RDS_CA_BUNDLE),
        # ... and the password never leaves in clear or as MD5, whatever the server asks.
        "require_auth": "scram-sha-256",
        "channel_binding": "prefer",
    }
    assert RDS_CA_BUNDLE.is_file()
    assert "p@ss" not in repr(target)


def test_db_host_and_db_name_override_the_secret() -> None:
    arn = create_secret(RDS_SECRET)
    target = database_target(
        _settings(arn, db_host="proxy.proxy-xyz.eu-west-1.rds.amazonaws.com", db_name="other")
    )
    assert (target.host, target.dbname, target.sslmode) == (
        "proxy.proxy-xyz.eu-west-1.rds.amazonaws.com",
        "other",
        "verify-full",
    )


def test_rds_managed_secret_with_only_user_and_password_needs_db_host() -> None:
    arn = create_secret({"username": "postgres", "password": "pw"})
    with pytest.raises(ConfigurationError, match="has no 'host'; set DB_HOST"):
        database_target(_settings(arn))
    target = database_target(_settings(arn, db_host="db.internal"))
    assert (target.host, target.port, target.dbname) == ("db.internal", 5432, "postgres")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        # no username
        ({"host": "h", "password": "pw"}, "has no 'username'"),
        # password of the wrong type
        ({"host": "h", "username": "u", "password": 123}, "'password' must be a string"),
        # port out of range; port that is not a number
        ({"host": "h", "username": "u", "password": "p", "port": 0}, "'port' must be an integer"),
        ({"host": "h", "username": "u", "password": "p", "port": "x"}, "'port' must be an int"),
        # valid JSON but not an object
        ('["u", "p"]', "is not a JSON object"),
        # not JSON at all
        ("user=u password=p", "is not a JSON document"),
    ],
)
def test_malformed_secrets_are_configuration_errors(document: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        database_target(_settings(create_secret(document)))


def test_port_written_as_text_is_accepted() -> None:
    arn = create_secret({**RDS_SECRET, "port": "6432"})
    assert database_target(_settings(arn)).port == 6432


def test_unreadable_secret_names_it() -> None:
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:missing-AbCdEf"
    with pytest.raises(ConfigurationError, match=f"cannot read secret {arn}"):
        database_target(_settings(arn))


def test_secret_is_cached_between_reads() -> None:
    arn = create_secret(RDS_SECRET)
    first = database_target(_settings(arn))
    client("secretsmanager").put_secret_value(
        SecretId=arn, SecretString='{"host": "h", "username": "u", "password": "new"}'
    )
    assert database_target(_settings(arn)) == first
    assert database_target(_settings(arn), force_fetch=True).password == "new"


def test_connects_to_the_database_through_the_secret(database_url: str) -> None:
    arn = create_secret(rds_secret_document(database_url))
    with connect_database(_settings(arn)) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        assert name == (conninfo_to_dict(database_url)["dbname"],)
        # The scheduler's connection settings hold behind RDS Proxy too.
        assert conn.autocommit
        assert conn.prepare_threshold is None


def test_database_url_and_secret_together_are_refused() -> None:
    arn = create_secret(RDS_SECRET)
    with pytest.raises(ConfigurationError, match="either DATABASE_URL or DB_SECRET_ARN"):
        connect_database(_settings(arn, database_url="postgresql://localhost/flags"))


def test_neither_database_url_nor_secret_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"DATABASE_URL must be set .*, or DB_SECRET_ARN"):
        connect_database(DatabaseSettings())


class _Opener:
    """Stands in for psycopg.connect: refuses every password but `accepted`."""

    def __init__(self, accepted: str) -> None:
        self.accepted = accepted
        self.passwords: list[str] = []

    def __call__(self, conninfo: str) -> Any:
        password = conninfo_to_dict(conninfo)["password"]
        self.passwords.append(password)
        if password != self.accepted:
            raise DatabaseUnavailable("password authentication failed")
        return object()


def test_rotated_password_is_read_again_and_used() -> None:
    arn = create_secret(RDS_SECRET)
    database_target(_settings(arn))  # cached: the password before rotation
    client("secretsmanager").put_secret_value(
        SecretId=arn, SecretString='{"host": "h", "username": "u", "password": "rotated"}'
    )
    opener = _Opener(accepted="rotated")
    connect_database(_settings(arn), open_connection=opener)
    assert opener.passwords == ["p@ss word'%", "rotated"]


def test_unchanged_secret_is_not_tried_twice() -> None:
    arn = create_secret(RDS_SECRET)
    opener = _Opener(accepted="something else")
    with pytest.raises(DatabaseUnavailable):
        connect_database(_settings(arn), open_connection=opener)
    assert opener.passwords == ["p@ss word'%"]
