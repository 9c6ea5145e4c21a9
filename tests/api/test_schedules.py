"""Schedules through the API: create with its checks, list, show, cancel, retry, preview,
bulk retry and the timeline, through API Gateway v2 events on a real database."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from flag_scheduler.api import runtime
from flag_scheduler.engine.backoff import BackoffPolicy, retry_delay
from flag_scheduler_cli import fault_injection
from tests.api.events import call, http_event
from tests.support import T0, run_service

PROBLEM = "urn:flag-scheduler:problem:"
pytestmark = pytest.mark.usefixtures("api")


def iso(moment: Any) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def flag(key: str = "banner", **fields: Any) -> dict[str, Any]:
    response = call(http_event("POST", "/flags", body={"flag_key": key, **fields}))
    assert response.status == 201, response.body
    body: dict[str, Any] = response.body
    return body


def schedule(key: str = "banner", *, status: int = 201, **body: Any) -> Any:
    body.setdefault("updates", {"enabled": True})
    body.setdefault("scheduled_at", iso(T0 + timedelta(hours=1)))
    response = call(http_event("POST", f"/flags/{key}/schedules", body=body))
    assert response.status == status, response.body
    return response.body


def test_create_with_an_offset_stores_utc(api: str) -> None:
    flag()
    created = schedule(scheduled_at="2026-03-01T12:00:00+02:00", max_retries=2)
    assert (created["scheduled_at"], created["state"], created["max_retries"]) == (
        "2026-03-01T10:00:00Z",
        "pending",
        2,
    )
    assert (created["warnings"], created["notes"]) == ([], [])
    with psycopg.connect(api) as conn:
        row = conn.execute("SELECT created_by FROM feature_flag_schedules").fetchone()
    assert row == ("ops@example.com",)


def test_local_time_in_a_zone() -> None:
    flag()
    winter = schedule(scheduled_at={"local": "2026-12-24T09:00", "time_zone": "Europe/Berlin"})
    assert winter["scheduled_at"] == "2026-12-24T08:00:00Z"

    gap = schedule(
        status=422, scheduled_at={"local": "2026-03-29T02:30", "time_zone": "Europe/Berlin"}
    )
    assert gap["type"] == PROBLEM + "time-in-gap"
    assert "clocks jump from 2026-03-29T02:00 to 2026-03-29T03:00" in gap["detail"]

    overlap = {"local": "2026-10-25T02:30", "time_zone": "Europe/Berlin"}
    ambiguous = schedule(status=422, scheduled_at=overlap)
    assert ambiguous["type"] == PROBLEM + "ambiguous-time"
    second = schedule(scheduled_at={**overlap, "fold": 1})
    assert second["scheduled_at"] == "2026-10-25T01:30:00Z"
    first = schedule(
        scheduled_at={**overlap, "offset": "+02:00"}, updates={"rollout_percentage": 5}
    )
    assert first["scheduled_at"] == "2026-10-25T00:30:00Z"

    unknown = schedule(
        status=422, scheduled_at={"local": "2026-12-24T09:00", "time_zone": "Mars/X"}
    )
    assert unknown["type"] == PROBLEM + "unknown-time-zone"


def test_past_times_and_the_lateness_limit() -> None:
    flag()
    recent = schedule(scheduled_at=iso(T0 - timedelta(hours=1)))
    assert [n["code"] for n in recent["notes"]] == ["applies_at_next_run"]
    too_late = schedule(status=422, scheduled_at=iso(T0 - timedelta(days=2)))
    assert too_late["type"] == PROBLEM + "too-late"
    assert "beyond the lateness limit of 86400 s" in too_late["detail"]


def test_clash_and_overlap_warnings() -> None:
    flag()
    at = T0 + timedelta(hours=2)
    first = schedule(scheduled_at=iso(at), updates={"enabled": True})
    clash = schedule(status=409, scheduled_at=iso(at), updates={"enabled": False})
    assert clash["type"] == PROBLEM + "schedule-clash"
    assert f"schedule {first['id']} already sets enabled" in clash["detail"]

    later = schedule(scheduled_at=iso(at + timedelta(hours=1)), updates={"enabled": False})
    earlier = schedule(
        scheduled_at=iso(at - timedelta(hours=1)),
        updates={"enabled": False, "rollout_percentage": 10},
    )
    codes = [(w["code"], w["schedule_id"]) for w in earlier["warnings"]]
    assert codes == [("overridden_later", first["id"]), ("overridden_later", later["id"])]
    assert [(w["code"], w["schedule_id"]) for w in later["warnings"]] == [
        ("overrides_earlier", first["id"])
    ]

    # Disabled already when it applies (the 10:00 change disables it): sets nothing new.
    noop = schedule(scheduled_at=iso(at - timedelta(minutes=30)), updates={"enabled": False})
    assert "no_change" in [w["code"] for w in noop["warnings"]]


def _fail(conn: psycopg.Connection[Any], schedule_id: str, error_class: str, retry_at: Any) -> None:
    """As a run leaves a failed schedule: waiting for a retry at `retry_at`, or (None) for good."""
    conn.execute(
        "UPDATE feature_flag_schedules SET status = 'failed', retry_count = 1,"
        " next_retry_at = %s, last_error = %s, last_error_class = %s WHERE id = %s",
        (retry_at, f"{error_class}: test", error_class, schedule_id),
    )


def _ids(query: dict[str, str], path: str = "/schedules") -> list[str]:
    response = call(http_event("GET", path, query=query))
    assert response.status == 200, response.body
    return [s["id"] for s in response.body["items"]]


def test_each_filter_selects_what_it_names(api: str) -> None:
    flag()
    flag("other", environment="staging")
    at = [T0 + timedelta(minutes=n) for n in range(-1, 6)]
    due = schedule(scheduled_at=iso(at[0]))["id"]  # a minute late: due now
    staged = call(
        http_event(
            "POST",
            "/flags/other/schedules",
            query={"environment": "staging"},
            body={"scheduled_at": iso(at[1]), "updates": {"enabled": True}},
        )
    ).body["id"]
    waiting, failed, expired, pending = (
        schedule(scheduled_at=iso(moment), updates={"rollout_percentage": n})["id"]
        for n, moment in enumerate(at[2:6])
    )
    with psycopg.connect(api, autocommit=True) as conn:
        _fail(conn, waiting, "lock_timeout", T0 + timedelta(hours=1))
        _fail(conn, failed, "lock_timeout", None)
        _fail(conn, expired, "expired", None)

    assert _ids({"flag_key": "other"}) == [staged]
    assert _ids({"environment": "staging"}) == [staged]
    assert _ids({"flag_key": "other", "environment": "production"}) == []
    assert _ids({"flag_key": "banner"}) == [due, waiting, failed, expired, pending]
    assert _ids({"status": "waiting_for_retry"}) == [waiting]
    assert _ids({"status": "failed_permanently"}) == [failed]
    assert _ids({"status": "expired"}) == [expired]
    assert _ids({"status": "failed"}) == [waiting, failed, expired]
    assert _ids({"status": "pending,expired"}) == [due, staged, expired, pending]
    assert _ids({"due": "true"}) == [due, staged]  # due by T0; the retry is due in an hour
    # A flag's page lists what is still to come: pending, and waiting for a retry.
    shown = call(http_event("GET", "/flags/banner")).body
    assert [s["id"] for s in shown["pending"]] == [due, waiting, pending]


def test_list_filters_and_pages(api: str) -> None:
    flag()
    flag("other", environment="staging")
    ids = [
        schedule(scheduled_at=iso(T0 + timedelta(minutes=n)), updates={"rollout_percentage": n})[
            "id"
        ]
        for n in range(1, 6)
    ]
    page = call(http_event("GET", "/schedules", query={"limit": "2"}))
    assert [s["id"] for s in page.body["items"]] == ids[:2]
    seen = list(ids[:2])
    while page.body["next_cursor"]:
        page = call(
            http_event(
                "GET", "/schedules", query={"limit": "2", "cursor": page.body["next_cursor"]}
            )
        )
        seen += [s["id"] for s in page.body["items"]]
    assert seen == ids

    by_flag = call(http_event("GET", "/flags/banner/schedules", query={"status": "pending"}))
    assert len(by_flag.body["items"]) == 5
    none = call(http_event("GET", "/schedules", query={"status": "applied,cancelled"}))
    assert none.body == {"items": [], "next_cursor": None}
    due = call(http_event("GET", "/schedules", query={"due": "true"}))
    assert due.body["items"] == []  # all in the future of T0

    bad = call(http_event("GET", "/schedules", query={"status": "pending,bogus"}))
    assert bad.status == 422
    assert bad.body["errors"][0]["field"] == "query.status"
    cursor = call(http_event("GET", "/schedules", query={"cursor": "not-a-cursor"}))
    assert (cursor.status, cursor.body["errors"][0]["field"]) == (422, "query.cursor")


def test_show_cancel_and_history_with_actor(api: str) -> None:
    flag()
    created = schedule(max_retries=2)
    shown = call(http_event("GET", f"/schedules/{created['id']}")).body
    assert shown["history"] == []
    attempts = shown["upcoming"]["attempts"]
    # The real jittered times: the engine's own backoff for this schedule id.
    policy, sid = BackoffPolicy(), UUID(created["id"])
    first = T0 + timedelta(hours=1)
    second = first + retry_delay(policy, 0, sid)
    third = second + retry_delay(policy, 1, sid)
    assert [a["at"] for a in attempts] == [iso(first), iso(second), iso(third)]
    assert shown["upcoming"]["permanently_failed_at"] == iso(third)

    cancelled = call(http_event("POST", f"/schedules/{created['id']}/cancel"))
    assert (cancelled.status, cancelled.body["state"]) == (200, "cancelled")
    history = call(http_event("GET", f"/schedules/{created['id']}")).body["history"]
    assert [(h["outcome"], h["actor"], h["request_id"]) for h in history] == [
        ("cancelled", "ops@example.com", "req-1")
    ]
    again = call(http_event("POST", f"/schedules/{created['id']}/cancel"))
    assert (again.status, again.body["type"]) == (409, PROBLEM + "wrong-state")
    assert "cancelled" in again.body["detail"]


def test_unknown_or_malformed_schedule_ids() -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    for method, path in [
        ("GET", f"/schedules/{missing}"),
        ("GET", f"/schedules/{missing}/preview"),
        ("POST", f"/schedules/{missing}/cancel"),
        ("POST", f"/schedules/{missing}/retry"),
    ]:
        response = call(http_event(method, path))
        assert (response.status, response.body["type"]) == (404, PROBLEM + "schedule-not-found")
    malformed = call(http_event("GET", "/schedules/not-a-uuid"))
    assert malformed.status == 422
    assert malformed.body["errors"][0]["field"] == "path.schedule_id"


def _fail_permanently(api: str, conn: psycopg.Connection[Any], key: str, at_minutes: int) -> str:
    flag_id = call(http_event("GET", f"/flags/{key}")).body["id"]
    created = schedule(key, scheduled_at=iso(T0 + timedelta(minutes=at_minutes)), max_retries=0)
    fault_injection.set_fault(conn, UUID(flag_id), "40001", "conflict")
    run_service(api, T0 + timedelta(minutes=at_minutes))
    fault_injection.clear_fault(conn, UUID(flag_id))
    return str(created["id"])


def test_retry_one_preview_and_wrong_state(api: str, conn: psycopg.Connection[Any]) -> None:
    flag()
    failed = _fail_permanently(api, conn, "banner", 1)
    shown = call(http_event("GET", f"/schedules/{failed}")).body
    assert (shown["state"], shown["upcoming"]) == ("failed_permanently", None)
    assert call(http_event("GET", f"/schedules/{failed}/preview")).body["upcoming"] is None

    retried = call(http_event("POST", f"/schedules/{failed}/retry"))
    assert (retried.status, retried.body["state"], retried.body["requeued_at"]) == (
        200,
        "pending",
        iso(T0),
    )
    preview = call(http_event("GET", f"/schedules/{failed}/preview")).body
    # Its first attempt: its scheduled time (09:01; the API's clock says 09:00).
    assert preview["upcoming"]["attempts"][0]["at"] == iso(T0 + timedelta(minutes=1))
    assert preview["policy"]["retry_limit"] == 0
    wrong = call(http_event("POST", f"/schedules/{failed}/retry"))
    assert (wrong.status, wrong.body["type"]) == (409, PROBLEM + "wrong-state")

    run_service(api, T0 + timedelta(minutes=2))
    applied = call(http_event("POST", f"/schedules/{failed}/cancel"))
    assert applied.status == 409
    assert "already applied" in applied.body["detail"]
    assert call(http_event("GET", "/flags/banner")).body["recent"][0]["state"] == "applied"


def test_a_bulk_dry_run_reads_rows_a_run_holds(
    api: str, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    flag()
    failed = _fail_permanently(api, conn, "banner", 1)
    monkeypatch.setenv("FLAG_SCHEDULE_LOCK_TIMEOUT_MS", "200")
    runtime.reset()
    runtime.set_clock(lambda: T0)
    with psycopg.connect(api) as run, run.transaction():
        # As a run holds a row it claimed: a preview neither waits for it nor locks it.
        run.execute("SELECT 1 FROM feature_flag_schedules FOR UPDATE")
        dry = call(http_event("POST", "/schedules/retry", body={"dry_run": True}))
    assert dry.status == 200, dry.body
    assert [s["id"] for s in dry.body["items"]] == [failed]


def test_bulk_retry_with_a_filter_and_dry_run(api: str, conn: psycopg.Connection[Any]) -> None:
    flag()
    flag("other")
    failed = [_fail_permanently(api, conn, "banner", n) for n in (1, 2)]
    other = _fail_permanently(api, conn, "other", 3)
    body = {"filter": {"flag_key": "banner", "error_class": "serialization_failure"}}
    dry = call(http_event("POST", "/schedules/retry", body={**body, "dry_run": True}))
    assert (dry.status, dry.body["dry_run"], dry.body["count"]) == (200, True, 2)
    assert sorted(s["id"] for s in dry.body["items"]) == sorted(failed)
    assert {s["state"] for s in dry.body["items"]} == {"failed_permanently"}

    real = call(http_event("POST", "/schedules/retry", body=body))
    assert real.body["count"] == 2
    assert {s["state"] for s in real.body["items"]} == {"pending"}
    other_state = call(http_event("GET", f"/schedules/{other}")).body
    assert other_state["state"] == "failed_permanently"
    history = other_state["history"]
    assert [h["outcome"] for h in history] == ["failed_permanently"]
    actors = [
        h["actor"] for h in call(http_event("GET", f"/schedules/{failed[0]}")).body["history"]
    ]
    assert actors == [None, "ops@example.com"]
    nothing = call(http_event("POST", "/schedules/retry", body=body))
    assert nothing.body["count"] == 0

    since = call(
        http_event(
            "POST",
            "/schedules/retry",
            body={"filter": {"failed_since": "2999-01-01T00:00:00Z"}, "dry_run": True},
        )
    )
    assert since.body["count"] == 0
    bad = call(http_event("POST", "/schedules/retry", body={"filter": {"error_class": "nope"}}))
    assert (bad.status, bad.body["errors"][0]["field"]) == (422, "body.filter.error_class")


def test_timeline_until() -> None:
    flag()
    schedule(scheduled_at="2026-03-06T09:00:00Z", updates={"enabled": True})
    schedule(scheduled_at="2026-03-06T18:00:00Z", updates={"rollout_percentage": 50})
    schedule(scheduled_at="2026-03-07T09:00:00Z", updates={"enabled": False})
    friday = call(
        http_event("GET", "/flags/banner/timeline", query={"until": "2026-03-06T18:00:00Z"})
    ).body
    assert friday["value_at_until"] == {"enabled": True, "rollout_percentage": 50}
    assert [s["sets"] for s in friday["steps"]] == [{"enabled": True}, {"rollout_percentage": 50}]
    everything = call(http_event("GET", "/flags/banner/timeline")).body
    assert everything["value_at_until"] == {"enabled": False, "rollout_percentage": 50}
    bad = call(http_event("GET", "/flags/banner/timeline", query={"until": "friday"}))
    assert (bad.status, bad.body["errors"][0]["field"]) == (422, "query.until")


def test_status_counts(api: str) -> None:
    flag()
    schedule(scheduled_at=iso(T0 - timedelta(minutes=5)))
    status = call(http_event("GET", "/status")).body
    assert (status["due_now"], status["scheduled_later"], status["oldest_lag_seconds"]) == (
        1,
        0,
        300.0,
    )


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        # Each bad field named once, in the form the caller chose.
        (
            {"scheduled_at": "tomorrow", "updates": {"enabled": True}},
            {"body.scheduled_at": "must be an RFC 3339 date-time with seconds and an offset"},
        ),
        (
            {"scheduled_at": {"local": "2026-12-24T09:00"}, "updates": {}},
            {
                "body.scheduled_at.time_zone": "Field required",
                "body.updates": "updates must set at least one of enabled, rollout_percentage",
            },
        ),
        (
            {"scheduled_at": "2026-12-24T09:00:00", "updates": {"enabled": None}},
            {
                "body.scheduled_at": "must be an RFC 3339 date-time with seconds and an offset",
                "body.updates": "enabled must not be null",
            },
        ),
        (
            {
                "scheduled_at": "2026-02-30T09:00:00Z",
                "updates": {"rollout_percentage": 101},
                "max_retries": 11,
            },
            {
                "body.scheduled_at": "'2026-02-30T09:00:00Z' is not a real date and time",
                "body.updates.rollout_percentage": "Input should be less than or equal to 100",
                "body.max_retries": "Input should be less than or equal to 10",
            },
        ),
        (
            {
                "scheduled_at": {
                    "local": "2026-12-24T09:00",
                    "time_zone": "Europe/Berlin",
                    "offset": "+99:99",
                },
                "updates": {"enabled": True},
            },
            {"body.scheduled_at.offset": "String should match pattern"},
        ),
    ],
)
def test_validation_names_each_bad_field(body: dict[str, Any], errors: dict[str, str]) -> None:
    flag()
    response = schedule(status=422, **body)
    assert response["type"] == PROBLEM + "validation-failed"
    found = {error["field"]: error["message"] for error in response["errors"]}
    assert set(found) == set(errors)
    for field, message in errors.items():
        assert found[field].startswith(message), (field, found[field])
