"""Hostile strings in every field: always a JSON answer, never a 5xx, nothing written."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from tests.api.events import call, http_event

pytestmark = pytest.mark.usefixtures("api")

HOSTILE = [
    "",
    " ",
    "\x00",
    "nul\x00inside",
    "'; DROP TABLE feature_flags; --",
    "../../etc/passwd",
    "%00%2F..",
    "\u202etxt.exe",
    "😀" * 50,
    "x" * 10_000,
    "\ud800",  # a lone surrogate: not encodable as UTF-8
    "line\nbreak\r\n",
    "{{7*7}}${jndi:ldap://x}",
    "<script>alert(1)</script>",
]
SCHEDULE_BODY: dict[str, Any] = {
    "scheduled_at": "2030-01-01T09:00:00Z",
    "updates": {"enabled": True},
}


def _ok(response: Any) -> None:
    assert response.status < 500, response.body
    assert response.body is not None


def _counts(url: str) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM feature_flags), (SELECT count(*) FROM"
            " feature_flag_schedules), (SELECT count(*) FROM feature_flag_schedule_attempts)"
        ).fetchone()
    assert row is not None
    return tuple(row)


RAMP_BODY: dict[str, Any] = {"rollout": [5, 50], "hold_seconds": 600}
SOME_ID = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def seeded(api: str) -> str:
    """The flag `banner`, and `ramped` with an active ramp (so a ramp body that passes
    validation is refused with 409, and nothing is written either way)."""
    assert call(http_event("POST", "/flags", body={"flag_key": "banner"})).status == 201
    assert call(http_event("POST", "/flags", body={"flag_key": "ramped"})).status == 201
    ramp = call(http_event("POST", "/flags/ramped/ramps", body=RAMP_BODY))
    assert ramp.status == 201, ramp.body
    return api


def _safe(text: str) -> str:
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_path_and_query_values(seeded: str, text: str) -> None:
    before = _counts(seeded)
    raw = _safe(text)
    for method, path, query in [
        ("GET", f"/flags/{raw}", {}),
        ("GET", f"/flags/{quote(raw, safe='')}/timeline", {}),
        ("GET", f"/schedules/{raw}", {}),
        ("POST", f"/schedules/{raw}/cancel", {}),
        ("GET", "/flags", {"environment": raw}),
        ("GET", "/flags/banner", {"environment": raw}),
        ("GET", "/schedules", {"status": raw}),
        ("GET", "/schedules", {"flag_key": raw}),
        ("GET", "/schedules", {"cursor": raw}),
        ("GET", "/schedules", {"limit": raw}),
        ("GET", "/schedules", {"due": raw}),
        ("GET", "/flags/banner/timeline", {"until": raw}),
        ("GET", "/flags/banner/timeline", {"environment": raw}),
        ("GET", "/flags/banner/schedules", {"cursor": raw, "status": raw}),
        ("GET", "/flags/banner/schedules", {"environment": raw}),
        ("GET", f"/flags/{quote(raw, safe='')}/schedules", {}),
        ("POST", f"/flags/{quote(raw, safe='')}/schedules", {}),
        ("POST", "/flags/banner/schedules", {"environment": raw}),
        ("POST", f"/schedules/{raw}/retry", {}),
        ("GET", f"/schedules/{raw}/preview", {}),
        ("POST", f"/flags/{quote(raw, safe='')}/ramps", {}),
        ("POST", "/flags/banner/ramps", {"environment": raw}),
        ("GET", "/ramps", {"state": raw}),
        ("GET", "/ramps", {"flag_key": raw, "environment": raw}),
        ("GET", "/ramps", {"cursor": raw, "limit": raw}),
        ("GET", f"/ramps/{raw}", {}),
        ("POST", f"/ramps/{raw}/pause", {}),
        ("POST", f"/ramps/{raw}/resume", {}),
        ("POST", f"/ramps/{raw}/abort", {}),
    ]:
        _ok(call(http_event(method, path, query=query)))
    assert _counts(seeded) == before


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_body_fields(seeded: str, text: str) -> None:
    before = _counts(seeded)
    for path, body in [
        ("/flags", {"flag_key": text}),
        ("/flags", {"flag_key": "ok", "environment": text}),
        ("/flags", {"flag_key": "ok2", "description": text, "enabled": text}),
        ("/flags/banner/schedules", {**SCHEDULE_BODY, "scheduled_at": text}),
        (
            "/flags/banner/schedules",
            {**SCHEDULE_BODY, "scheduled_at": {"local": text, "time_zone": "UTC"}},
        ),
        (
            "/flags/banner/schedules",
            {**SCHEDULE_BODY, "scheduled_at": {"local": "2030-01-01T09:00", "time_zone": text}},
        ),
        (
            "/flags/banner/schedules",
            {
                **SCHEDULE_BODY,
                "scheduled_at": {"local": "2030-01-01T09:00", "time_zone": "UTC", "offset": text},
            },
        ),
        ("/flags/banner/schedules", {**SCHEDULE_BODY, "updates": {text: True}}),
        ("/flags/banner/schedules", {**SCHEDULE_BODY, "updates": {"enabled": text}}),
        ("/flags/banner/schedules", {**SCHEDULE_BODY, "max_retries": text}),
        ("/schedules/retry", {"filter": {"flag_key": text}}),
        ("/schedules/retry", {"filter": {"error_class": text, "failed_since": text}}),
        ("/schedules/retry", {"dry_run": text}),
        ("/schedules/retry", {"filter": {"state": text, "environment": text}}),
        ("/schedules/retry", {"filter": {"failed_before": text, "limit": text}}),
        ("/flags/banner/schedules", {**SCHEDULE_BODY, "updates": {"rollout_percentage": text}}),
        (
            "/flags/banner/schedules",
            {**SCHEDULE_BODY, "scheduled_at": {"local": text, "time_zone": text, "fold": text}},
        ),
        ("/flags/ramped/ramps", {**RAMP_BODY, "starts_at": text}),
        ("/flags/ramped/ramps", {**RAMP_BODY, "rollout": text}),
        ("/flags/ramped/ramps", {**RAMP_BODY, "rollout": [text]}),
        ("/flags/ramped/ramps", {**RAMP_BODY, "hold_seconds": text}),
        ("/flags/ramped/ramps", {**RAMP_BODY, "guard_alarms": [text]}),
        ("/flags/ramped/ramps", {**RAMP_BODY, "insufficient_data": text}),
        ("/flags/ramped/ramps", {**RAMP_BODY, "rollback_on_alarm": text, "enable": text}),
        ("/flags/ramped/ramps", {"stages": [{"updates": {text: 1}, "hold_seconds": 600}]}),
        ("/flags/ramped/ramps", {"stages": [{"updates": {"enabled": text}, "hold_seconds": 60}]}),
        ("/flags/ramped/ramps", {**RAMP_BODY, "end_updates": {"enabled": text}}),
        (f"/ramps/{SOME_ID}/abort", {"rollback": text}),
    ]:
        response = call(http_event("POST", path, body=body))
        _ok(response)
        if path == "/flags" and response.status == 201:
            # A description may hold anything printable; it comes back as it went in.
            assert response.body["description"] == body.get("description")
    assert _counts(seeded)[1:] == before[1:]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_headers_and_claims(seeded: str, text: str) -> None:
    raw = _safe(text)
    event = http_event(
        "POST", "/flags/banner/schedules", body=SCHEDULE_BODY, headers={"idempotency-key": raw}
    )
    response = call(event)
    _ok(response)
    with psycopg.connect(seeded) as conn:
        stored = [
            row[0] for row in conn.execute("SELECT idempotency_key FROM api_idempotency_keys")
        ]
    if response.status == 201:  # a key the API accepts is kept exactly as sent
        assert stored == [raw]
    else:
        assert (response.status, response.body["errors"][0]["field"]) == (
            422,
            "header.idempotency-key",
        )
        assert stored == []
    claims = http_event("GET", "/flags", claims={"sub": raw, "email": raw})
    _ok(call(claims))
    writer = http_event("POST", "/flags", body={"flag_key": "by-hostile"}, claims={"sub": raw})
    response = call(writer)
    _ok(response)
    if response.status == 201:
        with psycopg.connect(seeded) as conn:
            conn.execute("DELETE FROM feature_flags WHERE flag_key = 'by-hostile'")


@pytest.mark.parametrize(
    "raw_body", ["{", "null", "[]", '"text"', "1e999", '{"scheduled_at": []}', "\x00"]
)
def test_malformed_bodies(seeded: str, raw_body: str) -> None:
    for path in ("/flags", "/flags/banner/schedules", "/schedules/retry"):
        response = call(http_event("POST", path, raw_body=raw_body))
        _ok(response)
        assert response.status in (400, 422), (path, raw_body, response.body)


def test_body_that_is_not_utf8(seeded: str) -> None:
    event = http_event(
        "POST", "/flags/banner/schedules", raw_body=base64.b64encode(b"\xff\xfe").decode()
    )
    event["isBase64Encoded"] = True
    response = call(event)
    assert response.status == 422
    assert response.body["errors"] == [{"field": "body", "message": "is not UTF-8 encoded JSON"}]


@pytest.mark.parametrize(
    ("content_type", "hint"),
    [
        ("text/plain", False),
        ("application/xml", False),
        ("application/merge-patch+json", False),
        ("application/x-www-form-urlencoded", True),  # what curl -d sends
        ("multipart/form-data; boundary=x", False),
    ],
)
def test_a_body_that_is_not_declared_json_is_a_415_naming_its_type(
    seeded: str, content_type: str, hint: bool
) -> None:
    for method, path in (("POST", "/flags"), ("POST", "/flags/banner/ramps"), ("GET", "/flags")):
        event = http_event(
            method, path, raw_body='{"flag_key": "x"}', headers={"content-type": content_type}
        )
        response = call(event)
        assert response.status == 415, (path, content_type, response.body)
        assert response.body["type"] == "urn:flag-scheduler:problem:unsupported-media-type"
        assert response.body["detail"].startswith(
            f"the body must be JSON (Content-Type: application/json), not {content_type!r}"
        )
        assert ("curl -d sends a form" in response.body["detail"]) is hint


def test_json_in_any_case_with_parameters_is_json(seeded: str) -> None:
    for number, content_type in enumerate(("application/json; charset=utf-8", "Application/JSON")):
        event = http_event(
            "POST",
            "/flags",
            body={"flag_key": f"cased-{number}"},
            headers={"content-type": content_type},
        )
        response = call(event)
        assert response.status == 201, (content_type, response.body)


def test_a_body_that_is_not_json_says_where_it_stops(seeded: str) -> None:
    response = call(http_event("POST", "/flags", raw_body='{"flag_key": "x",}'))
    assert response.status == 422
    assert response.body["errors"] == [
        {
            "field": "body",
            "message": "is not valid JSON: Expecting property name enclosed in"
            " double quotes at character 17",
        }
    ]
