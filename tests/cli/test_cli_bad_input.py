"""A new user's mistakes, run as a subprocess: one clear line, the right exit code, nothing
changed, and no secret or traceback on the screen."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flag_scheduler.store.catalog import Catalog
from flag_scheduler_cli import fault_injection
from tests.support import Cli, cli_env, row_counts, run_cli, run_service

pytestmark = pytest.mark.slow

PASSWORD = "s3cret-Pa55word"


_run = run_cli


_env = cli_env


def _one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The single error line of a failed command (asserting there is exactly one)."""
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("flag-scheduler: error: "), lines[0]
    assert PASSWORD not in result.stderr + result.stdout
    return lines[0]


# --- migrate ---


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        # not a URL at all: bad configuration, said without quoting it
        ("not a url", 2, "DATABASE_URL must be a PostgreSQL URL"),
        # another database's URL
        (f"mysql://app:{PASSWORD}@db.example/app", 2, "got a mysql:// URL"),
        # a port that is not a number
        (f"postgresql://app:{PASSWORD}@localhost:port/app", 2, "must be a PostgreSQL URL"),
        # nothing listens there: operational, password scrubbed
        (f"postgresql://app:{PASSWORD}@127.0.0.1:1/app", 1, "cannot migrate the database"),
        # a host that does not resolve
        (f"postgresql://app:{PASSWORD}@no-such-host.invalid/app", 1, "no-such-host.invalid"),
    ],
)
def test_migrate_with_a_bad_database_url_is_one_line(url: str, code: int, message: str) -> None:
    line = _one_line(_run("migrate", env=_env(DATABASE_URL=url)), code)
    assert message in line


@pytest.mark.parametrize(
    "command", [("status",), ("flags", "list"), ("ramps", "list"), ("invoke",), ("serve",)]
)
def test_every_database_command_refuses_a_url_that_is_not_postgresql(
    command: tuple[str, ...],
) -> None:
    env = _env(DATABASE_URL=f"mysql://app:{PASSWORD}@db.example/app")
    assert "got a mysql:// URL" in _one_line(_run(*command, env=env), 2)


@pytest.fixture
def refusing_server() -> Iterator[int]:
    """A TCP port where a server speaking PostgreSQL's protocol asks for a password and
    refuses it (SQLSTATE 28P01), as a real server does on a wrong password."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def message(kind: bytes, body: bytes) -> bytes:
        return kind + struct.pack("!I", len(body) + 4) + body

    def serve() -> None:
        with listener:
            while True:
                try:
                    client, _ = listener.accept()
                except OSError:
                    return
                with client:
                    while True:  # SSL and GSS requests are declined; then the startup
                        size, code = struct.unpack("!II", client.recv(8))
                        client.recv(size - 8)
                        if code not in (80877103, 80877104):
                            break
                        client.sendall(b"N")
                    client.sendall(message(b"R", struct.pack("!I", 3)))  # cleartext password
                    client.recv(4096)
                    fields = b"SFATAL\0VFATAL\0C28P01\0M"
                    fields += b'password authentication failed for user "app"\0\0'
                    client.sendall(message(b"E", fields))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    listener.close()


def test_migrate_with_a_wrong_password_is_one_line(refusing_server: int) -> None:
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{refusing_server}/app?sslmode=disable"
    line = _one_line(_run("migrate", env=_env(DATABASE_URL=url)), 1)
    assert "cannot migrate the database" in line
    assert "password authentication failed" in line


def test_migrate_sql_into_a_closed_pipe_exits_quietly() -> None:
    """`flag-scheduler migrate --sql | head -1`: the reader leaves early; no BrokenPipeError."""
    process = subprocess.Popen(
        [sys.executable, "-m", "flag_scheduler_cli.cli", "migrate", "--sql"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.close()  # before anything is written: every write meets a closed pipe
    stderr = process.stderr.read()
    process.stderr.close()
    assert process.wait(timeout=120) == 1
    assert stderr.count("\n") == 3, stderr  # only Alembic's three progress lines
    assert "Traceback" not in stderr


# --- times ---


@pytest.mark.parametrize(
    "args",
    [
        # too far for Python's datetime: was OverflowError
        ("schedules", "create", "--flag", "banner", "--at=+3000000d", "--enable"),
        # a real moment, but past the last one the schema holds: was the raw CHECK text, exit 1
        ("schedules", "create", "--flag", "banner", "--at", "9999-12-31T23:59:59Z", "--enable"),
        ("schedules", "create", "--flag", "banner", "--at", "0001-01-01T12:00:00Z", "--enable"),
        (
            "schedules",
            "preview",
            "--from",
            "9999-12-31T23:00:00Z",
            "--max-retries",
            "10",
            "--base",
            "86400",
            "--cap",
            "604800",
        ),
    ],
)
def test_out_of_range_times_are_usage_errors_naming_the_range(
    cli: Cli, conn: psycopg.Connection[Any], args: tuple[str, ...]
) -> None:
    cli.ok("flags", "create", "banner")
    before = row_counts(conn)
    line = cli.fails(2, *args)
    assert "0001-01-02T00:00:00Z up to (not including) 9999-12-31T00:00:00Z" in line
    assert row_counts(conn) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # numbers too large for a timedelta: were OverflowError
        (("--base", "1e300", "--cap", "1e300"), "--base: must be a number 1..86400"),
        (("--jitter", "1e300"), "--jitter: must be a number 0..3600"),
        (("--base", "inf", "--cap", "inf"), "--base: must be a number 1..86400, got 'inf'"),
        # not a number at all: was ValueError (NaN compares false with everything)
        (("--jitter", "nan"), "--jitter: must be a number 0..3600, got 'nan'"),
        (("--cap", "604801"), "--cap: must be a number 1..604800"),
    ],
)
def test_preview_options_take_the_ranges_of_their_settings(
    args: tuple[str, ...], message: str
) -> None:
    line = _one_line(_run("schedules", "preview", *args, env=_env()), 2)
    assert message in line


def test_invoke_refuses_a_timeout_that_is_not_a_number() -> None:
    line = _one_line(_run("invoke", "--timeout", "nan", env=_env()), 2)
    assert "--timeout: must be a number 0.001..86400, got 'nan'" in line


def test_a_preview_running_past_the_last_time_stops_cleanly(cli: Cli) -> None:
    args = ("schedules", "preview", "--from", "9999-12-20T00:00:00Z", "--max-retries", "10")
    args += ("--base", "86400", "--cap", "604800")
    shown = cli.json(*args)
    assert [a["attempt"] for a in shown["attempts"]] == [1, 2, 3, 4]  # +1d, +2d, +4d
    assert shown["cut_short_at_attempt"] == 5
    assert "attempt 5 and later would fall after 9999-12-31 00:00:00Z" in cli.ok(*args)


def test_a_schedule_near_the_last_time_shows_its_timeline_cut_short(cli: Cli) -> None:
    cli.env["FLAG_SCHEDULE_BACKOFF_BASE_SECONDS"] = "86400"  # a day: the 2nd attempt is past
    cli.env["FLAG_SCHEDULE_BACKOFF_CAP_SECONDS"] = "86400"
    cli.ok("flags", "create", "banner")
    at = ("--at", "9999-12-30T23:00:00Z", "--enable", "--max-retries", "3")
    created = cli.json("schedules", "create", "--flag", "banner", *at)
    for command in ("show", "preview"):
        text = cli.ok("schedules", command, created["id"])  # was OverflowError
        assert "attempt 2 and later would fall after 9999-12-31 00:00:00Z" in text


def test_a_time_past_the_lateness_limit_needs_force(
    cli: Cli, conn: psycopg.Connection[Any]
) -> None:
    cli.ok("flags", "create", "banner")
    before = row_counts(conn)
    late = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    args = ("schedules", "create", "--flag", "banner", "--at", late, "--enable")

    line = cli.fails(2, *args)
    assert "FLAG_SCHEDULE_MAX_LATENESS_SECONDS (86400 s)" in line
    assert "--force" in line
    assert row_counts(conn) == before

    assert cli.json(*args, "--force")["status"] == "pending"
    # Within the limit no --force is needed.
    recent = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    cli.ok("schedules", "create", "--flag", "banner", "--at", recent, "--enable")


# --- invoke ---


def test_invoke_with_a_non_utf8_event_file(cli: Cli, tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_bytes(b'{"id": "caf\xe9"}')  # Latin-1
    line = cli.fails(2, "invoke", "--event", str(event))
    assert f"event file {event} is not UTF-8 text (byte 0xe9 at offset 11)" in line


@pytest.mark.parametrize("command", [("invoke",), ("demo",)])
def test_a_bad_powertools_log_level_is_named(cli: Cli, command: tuple[str, ...]) -> None:
    cli.env["POWERTOOLS_LOG_LEVEL"] = "BOGUS"
    line = cli.fails(2, *command)
    assert "POWERTOOLS_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in line
    assert "'BOGUS'" in line


def test_a_bad_metrics_switch_is_refused_before_the_run(
    cli: Cli, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    """Powertools reads it only when the metrics are flushed: after the run committed its
    work, so the invocation failed with a traceback although the schedule was applied."""
    schedule = catalog.create_schedule(
        catalog.create_flag("banner"), datetime.now(UTC) - timedelta(minutes=1), {"enabled": True}
    )
    cli.env["POWERTOOLS_METRICS_DISABLED"] = "maybe"
    line = cli.fails(2, "invoke")
    assert "POWERTOOLS_METRICS_DISABLED must be true or false" in line
    assert conn.execute(
        "SELECT status FROM feature_flag_schedules WHERE id = %s", (schedule,)
    ).fetchone() == ("pending",)


def test_invoke_with_a_timeout_inside_the_time_margin_is_refused(
    cli: Cli, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    catalog.create_schedule(
        catalog.create_flag("banner"), datetime.now(UTC) - timedelta(minutes=1), {"enabled": True}
    )
    line = cli.fails(2, "invoke", "--timeout", "5")
    assert "FLAG_SCHEDULE_TIME_MARGIN_SECONDS (10 s)" in line
    pending = "SELECT count(*) FROM feature_flag_schedules WHERE status = 'pending'"
    assert conn.execute(pending).fetchone() == (1,)
    assert json.loads(cli.ok("invoke", "--timeout", "11"))["applied"] == 1


def test_progress_lines_count_each_batch(cli: Cli, catalog: Catalog) -> None:
    due = datetime.now(UTC) - timedelta(minutes=1)
    for i in range(3):
        catalog.create_schedule(catalog.create_flag(f"flag-{i}"), due, {"enabled": True})
    cli.env["FLAG_SCHEDULE_BATCH_SIZE"] = "1"

    result = cli.run("invoke", "--progress")

    assert result.returncode == 0, result.stderr
    lines = [x for x in result.stderr.splitlines() if x.startswith("batch ")]
    assert lines[:3] == [
        f"batch {n}: claimed 1, applied 1, retried 0, failed 0, superseded 0"
        f" (run so far: applied {n})"
        for n in (1, 2, 3)
    ]


# --- schedules list --status: every state the CLI shows ---


def test_list_accepts_every_state_it_shows(
    cli: Cli, database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    now = datetime.now(UTC)

    def schedule(key: str, at: datetime, **kwargs: Any) -> Any:
        return catalog.create_schedule(catalog.create_flag(key), at, {"enabled": True}, **kwargs)

    ids = {
        "pending": schedule("later", now + timedelta(hours=1)),
        "applied": schedule("fine", now - timedelta(minutes=1)),
        "waiting_for_retry": schedule("flaky", now - timedelta(minutes=1), max_retries=3),
        "failed_permanently": schedule("broken", now - timedelta(minutes=1), max_retries=0),
        "expired": schedule("stale", now - timedelta(days=2)),
        "cancelled": schedule("dropped", now + timedelta(hours=1)),
    }
    for key in ("flaky", "broken"):
        fault_injection.set_fault(conn, catalog.get_flag(key).id, "40001")
    catalog.cancel(ids["cancelled"], now=now, actor="test")
    run_service(database_url, now)
    # Older than the change already applied to its flag: superseded when it runs.
    ids["superseded"] = catalog.create_schedule(
        catalog.get_flag("fine").id, now - timedelta(minutes=2), {"enabled": False}
    )
    run_service(database_url, now)

    for state, schedule_id in ids.items():
        shown = cli.json("schedules", "list", "--status", state)
        assert [s["id"] for s in shown] == [str(schedule_id)], state
        assert cli.json("schedules", "show", str(schedule_id))["state"] == state
    both = cli.json("schedules", "list", "--status", "pending", "--status", "expired")
    assert {s["id"] for s in both} == {str(ids["pending"]), str(ids["expired"])}
    # Raw `failed` still means all three kinds.
    failed = {s["id"] for s in cli.json("schedules", "list", "--status", "failed")}
    kinds = ("waiting_for_retry", "failed_permanently", "expired")
    assert failed == {str(ids[k]) for k in kinds}


# --- flag keys and environments ---


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("flags", "create", ""), "flag key must be 1..128 characters"),
        (("flags", "create", " banner"), "got ' banner'"),
        (("flags", "create", "banner "), "got 'banner '"),
        (("flags", "create", "x" * 10_000), "(10000 characters)"),
        (("flags", "create", "x" * 129), "(129 characters)"),
        (("flags", "create", "new banner"), "flag key must be"),
        (("flags", "create", ".banner"), "flag key must be"),  # a letter or digit first
        (("flags", "create", "banner", "--env", ""), "environment must be 1..64 characters"),
        (("flags", "create", "banner", "--env", "prod "), "environment must be"),
        (("flags", "create", "banner", "--env", "a:b"), "environment must be"),
    ],
)
def test_invalid_flag_keys_and_environments_are_refused(
    cli: Cli, conn: psycopg.Connection[Any], args: tuple[str, ...], message: str
) -> None:
    before = row_counts(conn)
    line = cli.fails(2, *args)
    assert message in line
    assert row_counts(conn) == before


def test_the_longest_valid_key_is_accepted(cli: Cli) -> None:
    key = "k" * 128
    assert cli.json("flags", "create", key, "--env", "e" * 64)["flag_key"] == key
    assert cli.json("flags", "create", "svc.checkout:v2_beta-1")["environment"] == "production"


# --- where the data lives ---


def test_the_embedded_database_is_the_same_from_any_folder(tmp_path: Path) -> None:
    """Run from two folders: the same per-user database, and status says where it is."""
    data_home = tmp_path / "xdg-data"
    env = _env(XDG_DATA_HOME=str(data_home), POWERTOOLS_LOG_LEVEL="WARNING")
    env.pop("FLAG_SCHEDULER_DATA_DIR", None)
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    expected = data_home / "flag-scheduler" / "pgdata"

    created = _run("flags", "create", "banner", env=env, cwd=first)
    assert created.returncode == 0, created.stderr
    listed = _run("flags", "list", "--json", env=env, cwd=second)
    assert listed.returncode == 0, listed.stderr
    assert [f["flag_key"] for f in json.loads(listed.stdout)] == ["banner"]
    status = _run("status", env=env, cwd=second)
    assert status.stderr == ""  # no runtime-folder warning either
    assert f"database:                     embedded PostgreSQL in {expected}" in status.stdout
    assert (expected / "PG_VERSION").exists()
    assert not (first / ".flag-scheduler").exists()
    assert not (second / ".flag-scheduler").exists()

    invoked = _run("invoke", env=env, cwd=second)
    assert invoked.returncode == 0, invoked.stderr
    assert f"flag-scheduler: database: embedded PostgreSQL in {expected}" in invoked.stderr


@pytest.mark.parametrize(
    ("make", "code", "message"),
    [
        # a file where the folder should be: was initdb's CalledProcessError traceback
        (lambda p: p.write_text("x"), 2, "is a file, not a folder"),
        # a folder holding something else: was 40 lines of initdb output and a traceback
        (
            lambda p: (p.mkdir(), (p / "notes.txt").write_text("x")),
            1,
            "cannot start the embedded PostgreSQL in",
        ),
    ],
)
def test_a_data_folder_that_cannot_hold_a_database_is_one_line(
    tmp_path: Path, make: Any, code: int, message: str
) -> None:
    folder = tmp_path / "pgdata"
    make(folder)
    line = _one_line(_run("status", "--data-dir", str(folder), env=_env()), code)
    assert message in line


def test_a_deeply_nested_event_file_is_one_line(tmp_path: Path) -> None:
    event = tmp_path / "deep.json"
    event.write_text("[" * 100_000)  # was RecursionError
    line = _one_line(_run("invoke", "--event", str(event), env=_env()), 2)
    assert "is nested too deeply to read" in line


# --- a database that was never migrated ---


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("flags", "list"),
        ("schedules", "list"),
        ("flags", "create", "banner"),
        ("invoke",),  # the handler's error, translated by its repository
    ],
)
def test_an_unmigrated_database_says_to_migrate(empty_database: str, args: tuple[str, ...]) -> None:
    result = _run(*args, env=_env(DATABASE_URL=empty_database, POWERTOOLS_LOG_LEVEL="CRITICAL"))
    if args == ("invoke",):  # it says which database first
        assert result.stderr.startswith("flag-scheduler: database: DATABASE_URL\n")
        result.stderr = result.stderr.split("\n", 1)[1]
    line = _one_line(result, 1)
    assert "does not exist); run `flag-scheduler migrate` first" in line


# --- usage errors ---


def test_a_usage_error_names_the_program_once() -> None:
    result = _run("schedules", "create", "--flag", "banner", env=_env())
    line = _one_line(result, 2)
    assert line.startswith("flag-scheduler: error: schedules create: the following arguments")
    assert line.count("flag-scheduler") == 1
