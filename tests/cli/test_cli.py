"""The console script, run as a user runs it: invoke (both databases) and the demo."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flag_scheduler.store.catalog import Catalog
from tests.support import cli_env, run_cli, schedule_row

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _cli(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, cwd=cwd)


_env = cli_env


def _summary(stdout: str) -> dict[str, Any]:
    return json.loads(stdout)  # logs and metrics go to stderr; stdout is the summary alone


def test_invoke_runs_the_handler_with_an_event_file(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    schedule = catalog.create_schedule(
        flag, datetime.now(UTC) - timedelta(seconds=5), {"enabled": True}
    )

    result = _cli(
        "invoke", "--event", "events/scheduled-event.json", env=_env(DATABASE_URL=database_url)
    )

    assert result.returncode == 0, result.stderr
    assert _summary(result.stdout)["applied"] == 1
    assert '"correlation_id":"53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa"' in result.stderr
    assert schedule_row(conn, schedule).status == "applied"
    # POWERTOOLS_METRICS_DISABLED (cli_env sets it) silences every metric, ColdStart too.
    assert '"_aws"' not in result.stderr
    metered = _cli(
        "invoke",
        env=_env(DATABASE_URL=database_url, POWERTOOLS_METRICS_DISABLED="false"),
    )
    assert metered.returncode == 0, metered.stderr
    assert '"ColdStart":[1.0]' in metered.stderr
    assert '"SchedulesApplied":[0.0]' in metered.stderr


def test_invoke_without_database_url_uses_a_migrated_embedded_server(tmp_path: Path) -> None:
    data = tmp_path / "pgdata"
    first = _cli("invoke", "--data-dir", str(data), env=_env(), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert _summary(first.stdout)["claimed"] == 0
    assert (data / "PG_VERSION").exists()
    # The data folder is kept, and a second run reuses it.
    second = _cli("invoke", "--data-dir", str(data), env=_env(), cwd=tmp_path)
    assert second.returncode == 0, second.stderr


@pytest.mark.parametrize(
    ("args", "extra_env", "code", "message"),
    [
        # a missing event file is bad usage
        (("invoke", "--event", "no-such.json"), {}, 2, "cannot read event file no-such.json"),
        # a bad configuration value is bad usage, named precisely
        (
            ("invoke",),
            {"FLAG_SCHEDULE_MAX_RETRIES": "11"},
            2,
            "FLAG_SCHEDULE_MAX_RETRIES must be an integer 0..10, got '11'",
        ),
        # an unreachable database is an operational error
        (
            ("invoke",),
            {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
            1,
            "cannot connect to the database",
        ),
    ],
)
def test_invoke_errors_are_one_clear_line_with_the_right_exit_code(
    args: tuple[str, ...], extra_env: dict[str, str], code: int, message: str, database_url: str
) -> None:
    env = _env(**{"DATABASE_URL": database_url, **extra_env})
    result = _cli(*args, env=env)
    assert result.returncode == code, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("flag-scheduler: error: ")
    assert message in last


def test_bad_usage_exits_2() -> None:
    result = _cli("frobnicate", env=_env())
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_the_demo_walks_through_apply_retry_and_permanent_failure() -> None:
    result = _cli("demo", env=_env())
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "holiday-banner  applied at 09:00:00" in out
    assert "checkout-v2     failed, retry 1 due at 09:02:" in out
    assert "checkout-v2     applied at 09:03:00 after 1 retry" in out
    assert "legacy-api      FAILED PERMANENTLY after 2 retries" in out
    assert "search-v3       FAILED PERMANENTLY after 0 retries  (invalid_updates" in out
    assert "holiday-banner  superseded" in out
