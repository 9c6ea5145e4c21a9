"""A refused login is a configuration error (one line, exit 2), never an outage, and a
rotated password is still picked up: against a server that really checks passwords."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from flag_scheduler.aws import scheduler
from flag_scheduler.aws.secrets import connect_database
from flag_scheduler.aws.settings import DatabaseSettings
from flag_scheduler.errors import DatabaseLoginRefused
from flag_scheduler_cli.local import FakeLambdaContext, migrate, start_embedded_server
from tests.aws.conftest import client, create_secret
from tests.support import run_cli
from tests.system import audit

RIGHT = "right-Pa55word"
WRONG = "wrong-Pa55word"


@dataclass(frozen=True)
class PasswordServer:
    """A server of this module's own whose every login must pass SCRAM."""

    socket_dir: str
    port: int

    def secret(self, password: str) -> dict[str, Any]:
        return {
            "host": self.socket_dir,
            "port": self.port,
            "username": "postgres",
            "password": password,
            "dbname": "postgres",
        }

    def url(self, password: str) -> str:
        return f"postgresql://postgres:{quote(password)}@/postgres?host={self.socket_dir}"


@pytest.fixture(scope="module")
def password_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PasswordServer]:
    server = start_embedded_server(tmp_path_factory.mktemp("scram") / "data", throwaway=True)
    uri = server.get_uri()
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(f"ALTER ROLE postgres PASSWORD '{RIGHT}'")
        row = conn.execute("SHOW hba_file").fetchone()
        assert row is not None
        # Replaces initdb's `trust` for everyone: from here on a password is checked.
        Path(row[0]).write_text("local all all scram-sha-256\n")
        conn.execute("SELECT pg_reload_conf()")
        port = conn.info.port
    found = PasswordServer(socket_dir=str(conninfo_to_dict(uri)["host"]), port=port)
    migrate(found.url(RIGHT))
    yield found
    server.cleanup()


def test_a_wrong_password_is_a_configuration_error_not_an_outage(
    password_server: PasswordServer,
    aws: None,
    monkeypatch: pytest.MonkeyPatch,
    logs: io.StringIO,
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DB_SECRET_ARN", create_secret(password_server.secret(WRONG)))

    with pytest.raises(DatabaseLoginRefused, match="password authentication failed") as caught:
        scheduler.lambda_handler({}, FakeLambdaContext())

    assert len(str(caught.value).splitlines()) == 1
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    failures = [line for line in lines if line["level"] == "ERROR"]
    assert [(f["message"], f["error_class"]) for f in failures] == [
        ("run_failed", "DatabaseLoginRefused")
    ]
    assert WRONG not in logs.getvalue()
    assert WRONG not in str(caught.value)


def test_a_rotated_password_is_read_again_after_a_refused_login(
    password_server: PasswordServer, aws: None
) -> None:
    arn = create_secret(password_server.secret(WRONG))
    settings = DatabaseSettings(db_secret_arn=arn)
    with pytest.raises(DatabaseLoginRefused):
        connect_database(settings)  # caches the secret with the old password
    client("secretsmanager").put_secret_value(
        SecretId=arn, SecretString=json.dumps(password_server.secret(RIGHT))
    )

    with connect_database(settings) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


@pytest.mark.parametrize("command", [["invoke"], ["status"]])
def test_the_cli_says_the_login_was_refused_and_exits_2(
    password_server: PasswordServer, command: list[str]
) -> None:
    result = run_cli(*command, env=audit.invoke_env(password_server.url(WRONG)))
    assert result.returncode == 2, result.stderr
    # (`invoke` logs run_failed first, as the function does in AWS.)
    last_line = result.stderr.splitlines()[-1]
    assert last_line.startswith("flag-scheduler: error: the database login was refused: ")
    assert "password authentication failed" in result.stderr
    assert WRONG not in result.stdout + result.stderr
    assert "run_aborted_systemic" not in result.stdout + result.stderr


def test_an_expired_connection_reconnects_with_the_rotated_password(
    password_server: PasswordServer, aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    arn = create_secret(password_server.secret(RIGHT))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DB_SECRET_ARN", arn)
    clock = [0.0]

    def backend_pid() -> int:
        scheduler.run_invocation(FakeLambdaContext(), monotonic=lambda: clock[0])
        assert scheduler._container.connection is not None
        return scheduler._container.connection.info.backend_pid

    first = backend_pid()
    rotated = "rotated-Pa55word"
    with psycopg.connect(password_server.url(RIGHT), autocommit=True) as admin:
        admin.execute(f"ALTER ROLE postgres PASSWORD '{rotated}'")
    try:
        client("secretsmanager").put_secret_value(
            SecretId=arn, SecretString=json.dumps(password_server.secret(rotated))
        )
        clock[0] += 60
        assert backend_pid() == first  # a young session lives on
        clock[0] += 900
        # Old enough: reconnect. The cached secret's password is refused, the secret is
        # read again, and the new session logs in with the rotated one.
        assert backend_pid() != first
    finally:
        scheduler.reset_container()
        with psycopg.connect(password_server.url(rotated), autocommit=True) as admin:
            admin.execute(f"ALTER ROLE postgres PASSWORD '{RIGHT}'")
