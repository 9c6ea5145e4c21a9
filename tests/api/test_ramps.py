"""Ramps through the API: create (both stage forms, both time forms), list, show, pause,
resume, abort with rollback, scopes, problems, and the CLI agreeing with the API on one ramp,
through API Gateway v2 events on a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from flag_scheduler.api import runtime
from flag_scheduler_cli import fault_injection
from tests.api.events import call, http_event
from tests.support import (
    T0,
    ramp_action_timeouts,
    record_ramp_action_timeouts,
    run_service,
)

PROBLEM = "urn:flag-scheduler:problem:"
pytestmark = pytest.mark.usefixtures("api")


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def flag(key: str = "banner", **fields: Any) -> None:
    response = call(http_event("POST", "/flags", body={"flag_key": key, **fields}))
    assert response.status == 201, response.body


def create(key: str = "banner", *, status: int = 201, **body: Any) -> Any:
    body.setdefault("starts_at", iso(T0 + timedelta(hours=1)))
    if "stages" not in body:
        body.setdefault("rollout", [5, 25, 100])
        body.setdefault("hold_seconds", 600)
    response = call(http_event("POST", f"/flags/{key}/ramps", body=body))
    assert response.status == status, response.body
    return response.body


def answer(method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
    response = call(http_event(method, path, **kwargs))
    assert response.status == status, response.body
    return response.body


def test_create_from_rollouts_and_show() -> None:
    flag()
    created = create(enable=True, guard_alarms=["errors-high"], rollback_on_alarm=True)
    ramp = created["ramp"]
    assert (ramp["state"], ramp["current_stage"], ramp["starts_at"]) == (
        "active",
        0,
        iso(T0 + timedelta(hours=1)),
    )
    assert ramp["stages"][0] == {
        "updates": {"enabled": True, "rollout_percentage": 5},
        "hold_seconds": 600,
    }
    assert (ramp["guard_alarms"], ramp["rollback_on_alarm"], ramp["created_by"]) == (
        ["errors-high"],
        True,
        "ops@example.com",
    )
    assert created["warnings"] == []
    shown = answer("GET", f"/ramps/{ramp['id']}")
    assert shown["ramp"] == ramp
    [stage0] = shown["schedules"]
    assert (stage0["stage"], stage0["state"], stage0["scheduled_at"]) == (
        0,
        "pending",
        iso(T0 + timedelta(hours=1)),
    )
    assert [(e["action"], e["stage"], e["actor"]) for e in shown["events"]] == [
        ("created", 0, "ops@example.com")
    ]


def test_explicit_stages_local_start_end_state_and_a_warning() -> None:
    flag(rollout_percentage=50)
    stages = [
        {"updates": {"rollout_percentage": 10}, "hold_seconds": 60},
        {"updates": {"rollout_percentage": 60}, "hold_seconds": 120},
    ]
    created = create(
        stages=stages,
        starts_at={"local": "2026-12-24T09:00", "time_zone": "Europe/Berlin"},
        end_updates={"rollout_percentage": 100},
        insufficient_data="halt",
    )
    ramp = created["ramp"]
    assert ramp["starts_at"] == "2026-12-24T08:00:00Z"
    assert (ramp["end_updates"], ramp["insufficient_data"]) == ({"rollout_percentage": 100}, "halt")
    assert len(created["warnings"]) == 1
    assert "50" in created["warnings"][0]


def test_invalid_ramp_names_each_problem() -> None:
    flag()
    stages = [
        {"updates": {"rollout_percentage": 150}, "hold_seconds": 600},
        {"updates": {}, "hold_seconds": 10},
    ]
    body = create(stages=stages, status=422)
    assert body["type"] == PROBLEM + "invalid-ramp"
    messages = [error["message"] for error in body["errors"]]
    assert len(messages) == 3, messages
    assert "stage 0" in messages[0]
    assert "0..100" in messages[0]
    assert "stage 1" in messages[1]
    assert "at least one" in messages[1]
    assert "stage 1" in messages[2]
    assert "hold" in messages[2]
    fields = [error["field"] for error in body["errors"]]
    assert fields == ["body.stages.0", "body.stages.1", "body.stages.1"]
    # The same mistakes given as rollout percentages: named where they are in that form.
    flat = create(rollout=[5, 150, 150], hold_seconds=10, guard_alarms=["a", "a"], status=422)
    assert [error["field"] for error in flat["errors"]] == [
        "body.hold_seconds",
        "body.rollout.1",
        "body.hold_seconds",
        "body.rollout.2",
        "body.hold_seconds",
        "body.guard_alarms",
    ], flat["errors"]
    good = [{"updates": {"rollout_percentage": 10}, "hold_seconds": 60}]
    forms = [
        ({}, "give stages, or rollout with hold_seconds"),
        ({"rollout": [5]}, "give stages, or rollout with hold_seconds"),
        ({"rollout": [5], "hold_seconds": 60, "stages": good}, "not both"),
        ({"stages": good, "enable": True}, "not both"),
    ]
    for form, message in forms:
        body = call(http_event("POST", "/flags/banner/ramps", body={"starts_at": iso(T0), **form}))
        assert (body.status, body.body["type"]) == (422, PROBLEM + "invalid-ramp")
        assert message in body.body["detail"]
    # a rollback no alarm could trigger: refused by the same rules as the CLI's
    lone = create(rollback_on_alarm=True, status=422)
    assert lone["type"] == PROBLEM + "invalid-ramp"
    assert lone["errors"] == [
        {
            "field": "body.rollback_on_alarm",
            "message": "rollback_on_alarm needs at least one guard alarm",
        }
    ]
    many = create(rollout=list(range(21)), status=422)
    assert "1..20 stages" in many["detail"]
    nowhere = create(starts_at="2026-12-01 08:00", status=422)
    assert nowhere["type"] == PROBLEM + "validation-failed"
    assert nowhere["errors"][0]["field"] == "body.starts_at"
    gap = create(starts_at={"local": "2026-03-29T02:30", "time_zone": "Europe/Berlin"}, status=422)
    assert gap["type"] == PROBLEM + "time-in-gap"
    assert answer("GET", "/ramps")["items"] == []


def test_unknown_flag_and_ramp_are_404_and_a_second_ramp_409() -> None:
    body = create("nope", status=404)
    assert body["type"] == PROBLEM + "flag-not-found"
    missing = "00000000-0000-4000-8000-000000000000"
    for method, path in [
        ("GET", f"/ramps/{missing}"),
        ("POST", f"/ramps/{missing}/pause"),
        ("POST", f"/ramps/{missing}/resume"),
        ("POST", f"/ramps/{missing}/abort"),
    ]:
        assert answer(method, path, 404)["type"] == PROBLEM + "ramp-not-found"
    assert answer("GET", "/ramps/not-a-uuid", 422)["type"] == PROBLEM + "validation-failed"
    flag()
    create()
    assert create(status=409)["type"] == PROBLEM + "wrong-state"


def test_pause_resume_abort_with_actor_and_wrong_states() -> None:
    flag()
    ramp_id = create()["ramp"]["id"]
    assert answer("POST", f"/ramps/{ramp_id}/resume", 409)["type"] == PROBLEM + "wrong-state"
    paused = answer("POST", f"/ramps/{ramp_id}/pause", claims={"sub": "svc-1"})
    assert (paused["ramp"]["state"], paused["ramp"]["paused_remaining_seconds"]) == (
        "paused",
        3600.0,
    )
    assert answer("POST", f"/ramps/{ramp_id}/pause", 409)["type"] == PROBLEM + "wrong-state"
    runtime.set_clock(lambda: T0 + timedelta(hours=2))
    resumed = answer("POST", f"/ramps/{ramp_id}/resume")
    assert resumed["ramp"]["state"] == "active"
    # the answer says when the stage is due: the hour of hold it had left, from the resume
    assert (resumed["stage"], resumed["due_at"]) == (0, iso(T0 + timedelta(hours=3)))
    shown = answer("GET", f"/ramps/{ramp_id}")
    live = [s for s in shown["schedules"] if s["state"] == "pending"]
    assert [(s["schedule_id"], s["scheduled_at"]) for s in live] == [
        (resumed["schedule_id"], resumed["due_at"])
    ]
    aborted = answer("POST", f"/ramps/{ramp_id}/abort", body={"rollback": True})
    assert (aborted["ramp"]["state"], aborted["rollback_schedule_id"]) == ("aborted", None)
    assert answer("POST", f"/ramps/{ramp_id}/abort", 409)["type"] == PROBLEM + "wrong-state"
    events = answer("GET", f"/ramps/{ramp_id}")["events"]
    assert [(e["action"], e["actor"]) for e in events] == [
        ("created", "ops@example.com"),
        ("paused", "svc-1"),
        ("resumed", "ops@example.com"),
        ("aborted", "ops@example.com"),
    ]


def _configure(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    """The API's settings read again from the environment with `variables` set."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    runtime.reset()
    runtime.set_clock(lambda: T0)


def test_ramp_actions_run_with_the_configured_timeouts(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not multiples of a second, so SHOW prints them in ms; the defaults are 5 s and 30 s.
    _configure(
        monkeypatch,
        FLAG_SCHEDULE_LOCK_TIMEOUT_MS="1234",
        FLAG_SCHEDULE_STATEMENT_TIMEOUT_MS="23456",
    )
    record_ramp_action_timeouts(conn)
    flag()
    ramp_id = create()["ramp"]["id"]
    for action in ("pause", "resume", "abort"):
        answer("POST", f"/ramps/{ramp_id}/{action}")
    assert ramp_action_timeouts(conn) == [
        (action, "1234ms", "23456ms") for action in ("created", "paused", "resumed", "aborted")
    ]


def test_a_ramp_a_run_holds_is_a_503_busy_after_the_configured_lock_timeout(
    api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(monkeypatch, FLAG_SCHEDULE_LOCK_TIMEOUT_MS="200")
    flag()
    ramp_id = create()["ramp"]["id"]
    with psycopg.connect(api) as run, run.transaction():
        # As a run advancing the ramp holds its row until it commits.
        run.execute("SELECT 1 FROM flag_ramps FOR UPDATE")
        started = time.monotonic()
        response = call(http_event("POST", f"/ramps/{ramp_id}/pause"))
        waited = time.monotonic() - started
    assert (response.status, response.body["type"]) == (503, PROBLEM + "busy")
    assert waited < 5  # the default lock timeout (5 s) would have held it longer
    assert answer("POST", f"/ramps/{ramp_id}/pause")["ramp"]["state"] == "paused"


def _refused_as_a_stage(method: str, path: str, ramp_id: str, stage: int) -> None:
    """409 wrong-state naming the ramp and the stage, and the ramp's own actions."""
    refused = answer(method, path, 409)
    assert refused["type"] == PROBLEM + "wrong-state"
    assert f"is stage {stage} of ramp {ramp_id}" in refused["detail"]
    assert all(action in refused["detail"] for action in ("pause", "resume", "abort"))


def test_a_stage_is_neither_cancelled_nor_retried_as_a_plain_schedule(
    api: str, conn: psycopg.Connection[Any]
) -> None:
    flag()
    ramp_id = create(starts_at=iso(T0))["ramp"]["id"]
    (stage,) = answer("GET", f"/ramps/{ramp_id}")["schedules"]
    assert stage["state"] == "pending"
    _refused_as_a_stage("POST", f"/schedules/{stage['schedule_id']}/cancel", ramp_id, 0)
    _refused_as_a_stage("POST", f"/schedules/{stage['schedule_id']}/retry", ramp_id, 0)
    assert answer("GET", f"/schedules/{stage['schedule_id']}")["history"] == []

    # Its stage fails for good: the ramp halts, and only resuming it retries the stage.
    flag_id = UUID(answer("GET", "/flags/banner")["id"])
    fault_injection.set_fault(conn, flag_id, "40001", "conflict")
    run_service(api, T0, max_retries=0)
    fault_injection.clear_fault(conn, flag_id)
    shown = answer("GET", f"/ramps/{ramp_id}")
    assert (shown["ramp"]["state"], shown["schedules"][0]["state"]) == (
        "halted",
        "failed_permanently",
    )
    _refused_as_a_stage("POST", f"/schedules/{stage['schedule_id']}/retry", ramp_id, 0)
    _refused_as_a_stage("POST", f"/schedules/{stage['schedule_id']}/cancel", ramp_id, 0)
    assert answer("GET", f"/ramps/{ramp_id}") == shown
    resumed = answer("POST", f"/ramps/{ramp_id}/resume")
    assert (resumed["ramp"]["state"], resumed["schedule_id"]) == ("active", stage["schedule_id"])
    assert answer("GET", f"/schedules/{stage['schedule_id']}")["state"] == "pending"


def test_abort_with_rollback_after_stage_0_applied(api: str) -> None:
    flag(rollout_percentage=3)
    ramp_id = create(starts_at=iso(T0))["ramp"]["id"]
    with psycopg.connect(api) as conn:
        # Stage 0 applied as the engine would: the ramp keeps the value before it.
        conn.execute(
            "UPDATE flag_ramps SET value_before = %s WHERE id = %s",
            (json.dumps({"enabled": False, "rollout_percentage": 3}), ramp_id),
        )
    aborted = answer("POST", f"/ramps/{ramp_id}/abort", body={"rollback": True})
    rollback = aborted["rollback_schedule_id"]
    schedule = answer("GET", f"/schedules/{rollback}")
    # The ramp sets only the rollout: only the rollout is rolled back.
    assert (schedule["updates"], schedule["scheduled_at"]) == ({"rollout_percentage": 3}, iso(T0))


def test_list_filters() -> None:
    flag("a")
    flag("b")
    flag("c", environment="staging")
    first = create("a")["ramp"]["id"]
    second = create("b")["ramp"]["id"]
    staging = call(
        http_event(
            "POST",
            "/flags/c/ramps",
            query={"environment": "staging"},
            body={"starts_at": iso(T0), "rollout": [50], "hold_seconds": 60},
        )
    )
    assert staging.status == 201, staging.body
    answer("POST", f"/ramps/{second}/pause")

    def ids(**query: str) -> set[str]:
        return {ramp["id"] for ramp in answer("GET", "/ramps", query=query)["items"]}

    assert len(ids()) == 3
    assert ids(state="paused") == {second}
    assert ids(state="active,paused", environment="production") == {first, second}
    assert ids(flag_key="a") == {first}
    assert ids(environment="staging") == {staging.body["ramp"]["id"]}
    bad = answer("GET", "/ramps", 422, query={"state": "running"})
    assert bad["errors"][0]["field"] == "query.state"


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("POST", "/flags/banner/ramps", "flags:read"),
        ("POST", "/ramps/00000000-0000-4000-8000-000000000000/pause", "flags:read"),
        ("POST", "/ramps/00000000-0000-4000-8000-000000000000/resume", "flags:read"),
        ("POST", "/ramps/00000000-0000-4000-8000-000000000000/abort", "flags:read"),
        ("GET", "/ramps", "flags:write"),
        ("GET", "/ramps/00000000-0000-4000-8000-000000000000", "flags:write"),
    ],
)
def test_a_missing_scope_is_403(method: str, path: str, scope: str) -> None:
    response = call(http_event(method, path, body={}, scope=scope))
    assert (response.status, response.body["type"]) == (403, PROBLEM + "forbidden")


@pytest.mark.slow
def test_the_cli_and_the_api_show_the_same_ramp(api: str) -> None:
    runtime.set_clock(runtime.utc_now)  # the CLI reads the real clock
    flag()
    start = iso(datetime.now().astimezone() + timedelta(hours=1))
    ramp_id = create(starts_at=start.split(".")[0] + "Z" if "." in start else start)["ramp"]["id"]
    answer("POST", f"/ramps/{ramp_id}/pause")
    env = {**os.environ, "DATABASE_URL": api, "POWERTOOLS_LOG_LEVEL": "WARNING"}
    result = subprocess.run(
        [sys.executable, "-m", "flag_scheduler_cli.cli", "ramps", "show", ramp_id, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert normalized(json.loads(result.stdout)) == normalized(answer("GET", f"/ramps/{ramp_id}"))


def normalized(document: Any) -> Any:
    """Times as instants (the CLI writes +00:00, the API Z), numbers as numbers."""
    if isinstance(document, dict):
        return {key: normalized(value) for key, value in document.items()}
    if isinstance(document, list):
        return [normalized(value) for value in document]
    if isinstance(document, str) and len(document) >= 20 and document[10:11] == "T":
        try:
            return datetime.fromisoformat(document.replace("Z", "+00:00"))
        except ValueError:
            return document
    return document


def _ramp_warnings(body: Any) -> list[str]:
    return [w["detail"] for w in body["warnings"] if w["code"] == "ramp_overrides_later"]


def test_a_plain_change_during_a_ramp_is_warned_of_the_stages_still_to_come() -> None:
    flag()
    ramp_id = create()["ramp"]["id"]  # 5, 25, 100 from T0+1h: only stage 0 is scheduled

    def schedule(hours: int, **updates: Any) -> Any:
        body = {"scheduled_at": iso(T0 + timedelta(hours=hours)), "updates": updates}
        return answer("POST", "/flags/banner/schedules", 201, body=body)

    changed = schedule(3, rollout_percentage=0)
    (detail,) = _ramp_warnings(changed)
    assert detail.startswith(
        f"ramp {ramp_id} (active, at stage 0) sets rollout_percentage in stages not scheduled"
        " yet: each is scheduled when the stage before it applies"
    )
    # Stage 0 itself is pending: the usual warning names it.
    assert "overrides_earlier" in {w["code"] for w in changed["warnings"]}
    assert _ramp_warnings(schedule(4, enabled=True)) == []  # a field the ramp never sets

    answer("POST", f"/ramps/{ramp_id}/pause")
    (detail,) = _ramp_warnings(schedule(5, rollout_percentage=10))
    assert f"ramp {ramp_id} (paused, at stage 0)" in detail
    assert "scheduled, once the ramp is resumed, when the stage before it applies" in detail

    answer("POST", f"/ramps/{ramp_id}/abort")
    assert _ramp_warnings(schedule(6, rollout_percentage=20)) == []


def test_a_start_past_the_lateness_limit_is_refused_and_no_start_means_now() -> None:
    flag()
    lateness = runtime.settings().max_lateness_seconds
    late = iso(T0 - timedelta(seconds=lateness + 1))
    refused = create(status=422, starts_at=late)
    assert refused["type"] == PROBLEM + "too-late"
    assert refused["detail"] == (
        f"starts_at {late} is more than FLAG_SCHEDULE_MAX_LATENESS_SECONDS ({lateness} s)"
        " in the past: stage 0 would expire and halt the ramp"
    )
    assert answer("GET", "/ramps")["items"] == []
    # Within the limit a past start is accepted (stage 0 applies at the next run).
    within = create(starts_at=iso(T0 - timedelta(seconds=lateness)))["ramp"]
    answer("POST", f"/ramps/{within['id']}/abort")
    body = {"rollout": [5, 25], "hold_seconds": 600}
    response = call(http_event("POST", "/flags/banner/ramps", body=body))
    assert response.status == 201, response.body
    assert response.body["ramp"]["starts_at"] == iso(T0)


def _stopped_at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def test_ramps_come_a_page_at_a_time_newest_first_and_pages_hold_while_ramps_are_added() -> None:
    made = []
    for number in range(5):
        runtime.set_clock(_stopped_at(T0 + timedelta(seconds=number)))
        flag(f"paged-{number}")
        made.append(create(f"paged-{number}")["ramp"]["id"])
    first = answer("GET", "/ramps", query={"limit": "2"})
    assert [ramp["id"] for ramp in first["items"]] == made[::-1][:2]
    runtime.set_clock(_stopped_at(T0 + timedelta(seconds=10)))
    flag("paged-late")
    late = create("paged-late")["ramp"]["id"]  # newer than every page: never in a later one
    seen, cursor = [ramp["id"] for ramp in first["items"]], first["next_cursor"]
    while cursor is not None:
        page = answer("GET", "/ramps", query={"limit": "2", "cursor": cursor})
        seen += [ramp["id"] for ramp in page["items"]]
        cursor = page["next_cursor"]
    assert seen == made[::-1]
    everything = answer("GET", "/ramps")
    assert [ramp["id"] for ramp in everything["items"]] == [late, *made[::-1]]
    assert everything["next_cursor"] is None
    bad = answer("GET", "/ramps", 422, query={"cursor": "abc"})
    assert bad["errors"] == [
        {"field": "query.cursor", "message": "is not a cursor this API issued"}
    ]
