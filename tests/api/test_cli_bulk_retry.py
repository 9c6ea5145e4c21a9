"""`flag-scheduler schedules retry-failed` agrees with POST /schedules/retry."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from flag_scheduler_cli import fault_injection
from tests.api.events import call, http_event
from tests.api.test_cli_parity import Cli
from tests.support import T0, run_service

pytestmark = pytest.mark.slow


def _failed(api: str, conn: psycopg.Connection[Any], key: str, sqlstate: str) -> str:
    flag_id = call(http_event("POST", "/flags", body={"flag_key": key})).body["id"]
    created = call(
        http_event(
            "POST",
            f"/flags/{key}/schedules",
            body={
                "scheduled_at": "2026-03-01T09:01:00Z",
                "updates": {"enabled": True},
                "max_retries": 0,
            },
        )
    ).body
    fault_injection.set_fault(conn, UUID(flag_id), sqlstate, "injected")
    run_service(api, T0 + timedelta(minutes=1))
    fault_injection.clear_fault(conn, UUID(flag_id))
    return str(created["id"])


def test_cli_bulk_retry_matches_the_api(api: str, conn: psycopg.Connection[Any]) -> None:
    cli = Cli(api)
    conflict = _failed(api, conn, "a", "40001")
    deadlock = _failed(api, conn, "b", "40P01")
    dry = cli.json("schedules", "retry-failed", "--error-class", "deadlock", "--dry-run")
    api_dry = call(
        http_event(
            "POST",
            "/schedules/retry",
            body={"filter": {"error_class": "deadlock"}, "dry_run": True},
        )
    ).body
    assert [s["id"] for s in dry["items"]] == [s["id"] for s in api_dry["items"]] == [deadlock]
    assert (dry["count"], dry["dry_run"]) == (1, True)

    done = cli.json("schedules", "retry-failed", "--failed-permanently", "--flag", "a")
    assert [(s["id"], s["status"]) for s in done["items"]] == [(conflict, "pending")]
    history = call(http_event("GET", f"/schedules/{conflict}")).body["history"]
    assert history[-1]["outcome"] == "requeued"
    assert history[-1]["actor"].startswith("cli")

    refused = cli.run("schedules", "retry-failed", "--since", "yesterday")
    assert refused.returncode == 2
    assert "expected an ISO 8601 time with offset" in refused.stderr


def test_cli_actions_keep_the_user_in_request_id_and_fill_actor(
    api: str, conn: psycopg.Connection[Any]
) -> None:
    cli = Cli(api)
    failed = _failed(api, conn, "a", "40001")
    cli.json("schedules", "retry", failed)
    [requeued] = cli.json("schedules", "show", failed)["history"][-1:]
    assert requeued["outcome"] == "requeued"
    assert requeued["request_id"].startswith("cli")
    api_history = call(http_event("GET", f"/schedules/{failed}")).body["history"]
    assert api_history[-1]["actor"] == requeued["request_id"]
