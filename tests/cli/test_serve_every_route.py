"""Every operation of the OpenAPI document answered with real data over real HTTP by `serve`
(the events tests in tests/api cover each in depth; this shows serve carries each one)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cli.serving import HttpResponse, Served, request, serving
from tests.support import as_api_role

ROOT = Path(__file__).resolve().parents[2]


def _documented_operations() -> set[tuple[str, str]]:
    document = json.loads((ROOT / "docs" / "openapi.json").read_text())
    return {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}


class Walk:
    """Requests through serve, remembering which documented operation each one was."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.walked: set[tuple[str, str]] = set()

    def __call__(
        self,
        method: str,
        template: str,
        expected: int,
        body: Any = None,
        headers: dict[str, str] | None = None,
        **values: str,
    ) -> Any:
        path = re.sub(r"\{(\w+)\}", lambda m: values.pop(m.group(1)), template)
        if values:
            path += "?" + "&".join(f"{k}={v}" for k, v in values.items())
        response: HttpResponse = request(self.served, method, path, body=body, headers=headers)
        assert response.status == expected, (method, path, response.body, self.served.stderr[-5:])
        self.walked.add((method, template))
        return response.body


def _fail_for_good(database_url: str, schedule_id: str) -> None:
    """As a run would leave a schedule that failed permanently with a lock timeout."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE feature_flag_schedules SET status = 'failed', retry_count = 0,"
            " last_error = 'lock_timeout: lock timeout', last_error_class = 'lock_timeout'"
            " WHERE id = %s",
            (schedule_id,),
        )


@pytest.mark.slow
def test_serve_answers_every_documented_operation_with_real_data(database_url: str) -> None:
    _walk(database_url, database_url)


@pytest.mark.slow
def test_every_operation_works_as_the_api_role_of_docs_api_role_sql(database_url: str) -> None:
    with as_api_role(database_url) as api_url:
        _walk(api_url, database_url)
        with psycopg.connect(api_url) as api:
            # What the role must not do: delete, change a flag's value, touch the run state.
            for statement in (
                "DELETE FROM feature_flags",
                "DELETE FROM feature_flag_schedules",
                "DELETE FROM feature_flag_schedule_attempts",
                "DELETE FROM flag_ramps",
                "UPDATE feature_flags SET enabled = true",
                "UPDATE scheduler_run_state SET last_run_finished_at = now()",
                "SELECT count(*) FROM notification_outbox",
                "DROP TABLE api_idempotency_keys",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    api.execute(statement)
                api.rollback()


def _walk(api_url: str, owner_url: str) -> None:
    """Every documented operation through serve on `api_url` (`owner_url` plays the
    scheduler, failing a schedule as a run would)."""
    soon = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    later = soon + timedelta(hours=1)
    with serving(api_url) as served:
        api = Walk(served)
        assert api("GET", "/status", 200)["due_now"] == 0
        api("POST", "/flags", 201, {"flag_key": "walked", "description": "over HTTP"})
        assert [f["flag_key"] for f in api("GET", "/flags", 200)["items"]] == ["walked"]

        created = api(
            "POST",
            "/flags/{flag_key}/schedules",
            201,
            {"scheduled_at": soon.isoformat(), "updates": {"rollout_percentage": 40}},
            flag_key="walked",
        )
        schedule = created["id"]
        flag = api("GET", "/flags/{flag_key}", 200, flag_key="walked")
        assert [s["id"] for s in flag["pending"]] == [schedule]
        listed = api("GET", "/flags/{flag_key}/schedules", 200, flag_key="walked")
        assert [s["id"] for s in listed["items"]] == [schedule]
        everything = api("GET", "/schedules", 200, flag_key="walked", status="pending")
        assert [s["id"] for s in everything["items"]] == [schedule]
        timeline = api(
            "GET",
            "/flags/{flag_key}/timeline",
            200,
            flag_key="walked",
            until=(soon + timedelta(days=1)).isoformat().replace("+00:00", "Z"),
        )
        assert timeline["value_at_until"] == {"enabled": False, "rollout_percentage": 40}
        shown = api("GET", "/schedules/{schedule_id}", 200, schedule_id=schedule)
        assert shown["state"] == "pending"
        preview = api("GET", "/schedules/{schedule_id}/preview", 200, schedule_id=schedule)
        assert preview["upcoming"], preview
        assert api("POST", "/schedules/{schedule_id}/cancel", 200, schedule_id=schedule)[
            "state"
        ] == ("cancelled")

        failed = api(
            "POST",
            "/flags/{flag_key}/schedules",
            201,
            {"scheduled_at": soon.isoformat(), "updates": {"enabled": True}},
            flag_key="walked",
        )["id"]
        _fail_for_good(owner_url, failed)
        retried = api("POST", "/schedules/{schedule_id}/retry", 200, schedule_id=failed)
        assert retried["state"] == "pending"
        _fail_for_good(owner_url, failed)
        bulk = api(
            "POST",
            "/schedules/retry",
            200,
            {"filter": {"state": "failed_permanently", "error_class": "lock_timeout"}},
        )
        assert (bulk["count"], [s["id"] for s in bulk["items"]]) == (1, [failed])

        replayed, again = (
            api(
                "POST",
                "/flags/{flag_key}/schedules",
                201,
                {"scheduled_at": later.isoformat(), "updates": {"enabled": True}},
                headers={"Idempotency-Key": "walk-1"},
                flag_key="walked",
            )
            for _ in range(2)
        )
        assert again["id"] == replayed["id"]
        api("POST", "/schedules/{schedule_id}/cancel", 200, schedule_id=replayed["id"])
        api("POST", "/flags", 201, {"flag_key": "ramped"})
        ramp = api(
            "POST",
            "/flags/{flag_key}/ramps",
            201,
            {"starts_at": soon.isoformat(), "rollout": [10, 50, 100], "hold_seconds": 600},
            flag_key="ramped",
        )["ramp"]["id"]
        assert [r["id"] for r in api("GET", "/ramps", 200)["items"]] == [ramp]
        assert api("GET", "/ramps/{ramp_id}", 200, ramp_id=ramp)["ramp"]["state"] == "active"
        paused = api("POST", "/ramps/{ramp_id}/pause", 200, ramp_id=ramp)
        assert paused["ramp"]["state"] == "paused"
        resumed = api("POST", "/ramps/{ramp_id}/resume", 200, ramp_id=ramp)
        assert (resumed["ramp"]["state"], resumed["stage"]) == ("active", 0)
        aborted = api("POST", "/ramps/{ramp_id}/abort", 200, {"rollback": False}, ramp_id=ramp)
        assert aborted["ramp"]["state"] == "aborted"

    assert api.walked == _documented_operations()
