"""Scopes and identities read from the JWT authorizer context, checked before anything else."""

from __future__ import annotations

import psycopg
import pytest

from tests.api.events import call, http_event

pytestmark = pytest.mark.usefixtures("api")


def test_status_with_read_scope() -> None:
    response = call(http_event("GET", "/status", scope="flags:read"))
    assert response.status == 200, response.body
    assert response.body["due_now"] == 0
    assert response.body["now"].startswith("2026-03-01T09:00:00")


def test_no_claims_is_401_problem() -> None:
    response = call(http_event("GET", "/status", authorized=False))
    assert response.status == 401
    assert response.content_type == "application/problem+json"
    assert response.body["type"] == "urn:flag-scheduler:problem:unauthenticated"
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("method", "path", "scope", "missing"),
    [
        ("GET", "/status", "flags:write", "flags:read"),  # write does not imply read
        ("GET", "/status", "", "flags:read"),
        ("POST", "/flags", "flags:read", "flags:write"),  # read cannot write
        # Refused before validation: an invalid body still gets 403, not 422.
        ("POST", "/flags/x/schedules", "flags:read", "flags:write"),
    ],
)
def test_missing_scope_is_403_problem(method: str, path: str, scope: str, missing: str) -> None:
    response = call(http_event(method, path, scope=scope, body={"junk": True}))
    assert response.status == 403
    assert response.body["type"] == "urn:flag-scheduler:problem:forbidden"
    assert missing in response.body["detail"]


def test_scopes_from_route_scope_list_and_array_claim() -> None:
    assert call(http_event("GET", "/status", scope=None, scopes=["flags:read"])).status == 200
    bracketed = http_event("GET", "/status", scope="[flags:read flags:write]")
    assert call(bracketed).status == 200


def test_scope_names_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    from flag_scheduler.api import runtime

    monkeypatch.setenv("FLAG_SCHEDULER_API_READ_SCOPE", "api/read")
    monkeypatch.setenv("FLAG_SCHEDULER_API_SCOPE_CLAIM", "scp")
    runtime.reset()
    event = http_event("GET", "/status", scope=None, claims={"sub": "s", "scp": "api/read"})
    assert call(event).status == 200
    assert call(http_event("GET", "/status", scope="flags:read")).status == 403


def test_openapi_needs_no_scope() -> None:
    response = call(http_event("GET", "/openapi.json", authorized=False))
    assert response.status == 200
    assert response.body["info"]["title"] == "flag-scheduler"


def test_an_unverified_email_is_recorded_as_the_sub(api: str) -> None:
    forged = {"sub": "attacker-9", "email": "ceo@example.com", "email_verified": "false"}
    created = call(http_event("POST", "/flags", body={"flag_key": "banner"}, claims=forged))
    assert created.status == 201, created.body
    with psycopg.connect(api) as conn:
        creators = conn.execute("SELECT created_by FROM feature_flags").fetchall()
    assert creators == [("attacker-9",)]


def test_one_email_with_two_subs_does_not_share_an_idempotency_key() -> None:
    assert call(http_event("POST", "/flags", body={"flag_key": "banner"})).status == 201
    body = {"updates": {"enabled": True}}
    answers = [
        call(
            http_event(
                "POST",
                "/flags/banner/schedules",
                body={**body, "scheduled_at": at},
                headers={"idempotency-key": "k-1"},
                claims={"sub": sub, "email": "ops@example.com", "email_verified": "true"},
            )
        )
        for sub, at in (("user-1", "2030-01-01T09:00:00Z"), ("user-2", "2030-01-02T09:00:00Z"))
    ]
    # Same e-mail and key, different requests: the second is not "the key reused".
    assert [a.status for a in answers] == [201, 201], answers[1].body
    assert answers[0].body["id"] != answers[1].body["id"]
