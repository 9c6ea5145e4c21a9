"""GET/POST /flags, GET /flags/{flag_key} and the timeline, through API Gateway v2 events."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.api.events import call, http_event

pytestmark = pytest.mark.usefixtures("api")

PROBLEM = "urn:flag-scheduler:problem:"


def _create(**fields: Any) -> Any:
    response = call(http_event("POST", "/flags", body={"flag_key": "banner", **fields}))
    assert response.status == 201, response.body
    return response.body


def test_create_list_and_show(api: str) -> None:
    created = _create(environment="staging", enabled=True, rollout_percentage=25, description="d")
    assert (created["flag_key"], created["environment"], created["enabled"]) == (
        "banner",
        "staging",
        True,
    )
    _create()
    listing = call(http_event("GET", "/flags", scope="flags:read"))
    assert [(f["flag_key"], f["environment"]) for f in listing.body["items"]] == [
        ("banner", "production"),
        ("banner", "staging"),
    ]
    only = call(http_event("GET", "/flags", query={"environment": "staging"}))
    assert [f["environment"] for f in only.body["items"]] == ["staging"]

    shown = call(http_event("GET", "/flags/banner", query={"environment": "staging"}))
    assert shown.status == 200
    assert (shown.body["rollout_percentage"], shown.body["pending"], shown.body["recent"]) == (
        25,
        [],
        [],
    )
    with psycopg.connect(api) as conn:
        creators = conn.execute("SELECT DISTINCT created_by FROM feature_flags").fetchall()
    assert creators == [("ops@example.com",)]  # the e-mail claim, when present


def test_actor_is_sub_without_email(api: str) -> None:
    event = http_event("POST", "/flags", body={"flag_key": "x"}, claims={"sub": "svc-deploy"})
    assert call(event).status == 201
    with psycopg.connect(api) as conn:
        assert conn.execute("SELECT created_by FROM feature_flags").fetchone() == ("svc-deploy",)


def test_duplicate_flag_is_409() -> None:
    _create()
    again = call(http_event("POST", "/flags", body={"flag_key": "banner"}))
    assert again.status == 409
    assert again.body["type"] == PROBLEM + "flag-exists"
    assert again.body["detail"] == "flag 'banner' already exists in environment 'production'"


def test_unknown_flag_is_404() -> None:
    response = call(http_event("GET", "/flags/nope"))
    assert response.status == 404
    assert response.content_type == "application/problem+json"
    assert response.body["type"] == PROBLEM + "flag-not-found"
    assert response.body["detail"] == "no flag 'nope' in environment 'production'"
    for path in ("/flags/nope/schedules", "/flags/nope/timeline"):
        assert call(http_event("GET", path)).body["type"] == PROBLEM + "flag-not-found"
    post = call(
        http_event(
            "POST",
            "/flags/nope/schedules",
            body={"scheduled_at": "2026-12-24T09:00:00Z", "updates": {"enabled": True}},
        )
    )
    assert post.status == 404


def test_validation_names_each_bad_field() -> None:
    response = call(
        http_event(
            "POST",
            "/flags",
            body={"flag_key": "bad key", "enabled": "yes", "rollout_percentage": 101, "x": 1},
        )
    )
    assert response.status == 422
    assert response.body["type"] == PROBLEM + "validation-failed"
    fields = {error["field"] for error in response.body["errors"]}
    assert fields == {
        "body.flag_key",
        "body.enabled",
        "body.rollout_percentage",
        "body.x",
    }
    assert "body.rollout_percentage" in response.body["detail"]


def test_unknown_route_is_a_problem() -> None:
    response = call(http_event("GET", "/nothing/here"))
    assert response.status == 404
    assert response.body["type"] == PROBLEM + "no-such-route"
