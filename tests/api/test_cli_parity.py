"""The CLI and the API give the same answers for the same data (one database, both doors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from flag_scheduler.api import runtime
from tests.api.events import call, http_event

pytestmark = pytest.mark.slow


class Cli:
    def __init__(self, database_url: str) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flag_scheduler_cli.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def cli(api: str) -> Cli:
    # The CLI reads the real clock: so does the API here.
    runtime.set_clock(runtime.utc_now)
    return Cli(api)


def _api(method: str, path: str, **kwargs: Any) -> Any:
    response = call(http_event(method, path, **kwargs))
    assert response.status < 300, response.body
    return response.body


def _common(left: dict[str, Any], right: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    keys = set(left) & set(right)
    assert len(keys) >= 5
    return {k: left[k] for k in keys}, {k: right[k] for k in keys}


def test_reads_agree(cli: Cli) -> None:
    cli.json("flags", "create", "banner", "--rollout", "10", "--description", "d")
    _api("POST", "/flags", body={"flag_key": "other", "environment": "staging"})
    created = cli.json(
        "schedules", "create", "--flag", "banner", "--at", "2030-01-01T09:00:00Z", "--enable"
    )
    _api(
        "POST",
        "/flags/other/schedules",
        query={"environment": "staging"},
        body={"scheduled_at": "2030-01-02T09:00:00+01:00", "updates": {"rollout_percentage": 5}},
    )

    # Ties on scheduled_at, created in reverse key order: the lists order them alike.
    for key in ("tie-e", "tie-d", "tie-c", "tie-b", "tie-a"):
        _api("POST", "/flags", body={"flag_key": key})
        _api(
            "POST",
            f"/flags/{key}/schedules",
            body={"scheduled_at": "2030-01-03T00:00:00Z", "updates": {"enabled": True}},
        )

    assert cli.json("flags", "list") == _api("GET", "/flags")["items"]
    cli_list = cli.json("schedules", "list")
    api_list = _api("GET", "/schedules")["items"]
    assert [s["id"] for s in cli_list] == [s["id"] for s in api_list]
    for mine, theirs in zip(cli_list, api_list, strict=True):
        assert _common(mine, theirs)[0] == _common(mine, theirs)[1]

    shown = cli.json("schedules", "show", created["id"])
    detail = _api("GET", f"/schedules/{created['id']}")
    left, right = _common(shown["schedule"], detail)
    assert left == right
    assert shown["state"] == detail["state"]
    assert shown["upcoming"]["attempts"] == detail["upcoming"]["attempts"]
    assert shown["upcoming"]["permanently_failed_at"] == detail["upcoming"]["permanently_failed_at"]
    preview = cli.json("schedules", "preview", created["id"])
    assert (
        preview["attempts"]
        == _api("GET", f"/schedules/{created['id']}/preview")["upcoming"]["attempts"]
    )

    status = cli.json("status")
    api_status = _api("GET", "/status")
    for key in ("due_now", "waiting_for_retry", "scheduled_later", "failed_last_24h"):
        assert status[key] == api_status[key], key


def test_creation_checks_agree(cli: Cli) -> None:
    cli.json("flags", "create", "banner")
    first = cli.json(
        "schedules", "create", "--flag", "banner", "--at", "2030-01-01T09:00:00Z", "--enable"
    )
    # The same clash through both doors: the same refusal.
    clash = cli.run(
        "schedules", "create", "--flag", "banner", "--at", "2030-01-01T09:00:00Z", "--disable"
    )
    refused = call(
        http_event(
            "POST",
            "/flags/banner/schedules",
            body={"scheduled_at": "2030-01-01T09:00:00Z", "updates": {"enabled": False}},
        )
    )
    assert clash.returncode == 1
    assert refused.status == 409
    assert clash.stderr.strip() == f"flag-scheduler: error: {refused.body['detail']}"
    assert first["id"] in refused.body["detail"]

    # A later change of the same field: the CLI prints the warning the API returns.
    printed = cli.run(
        "schedules", "create", "--flag", "banner", "--at", "2030-01-01T10:00:00Z", "--disable"
    )
    assert printed.returncode == 0, printed.stderr
    returned = _api(
        "POST",
        "/flags/banner/schedules",
        body={"scheduled_at": "2030-01-01T11:00:00Z", "updates": {"enabled": True}},
    )
    warning = returned["warnings"][0]
    assert warning["code"] == "overrides_earlier"
    assert f"overrides earlier: schedule {first['id']} sets enabled earlier" in printed.stdout
