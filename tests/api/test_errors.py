"""Failures the caller cannot fix: a problem document, never a bare gateway error."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import psycopg
import pytest

from flag_scheduler.api import request, runtime
from tests.api.events import call, http_event
from tests.support import T0

PROBLEM = "urn:flag-scheduler:problem:"
LAMBDA_CONTEXT = SimpleNamespace(aws_request_id="5f0c1d2e-lambda-request")


def test_unreachable_database_is_503(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://dbadmin@/postgres?host={tmp_path}&port=6543")
    monkeypatch.delenv("DB_SECRET_ARN", raising=False)
    runtime.reset()
    try:
        response = call(http_event("GET", "/flags"), LAMBDA_CONTEXT)
    finally:
        runtime.reset()
    assert response.status == 503
    assert response.body["type"] == PROBLEM + "database-unavailable"
    assert response.body["detail"] == "the database is unavailable"
    assert response.body["instance"] == LAMBDA_CONTEXT.aws_request_id
    for secret in (str(tmp_path), "6543", "dbadmin"):
        assert secret not in json.dumps(response.body)


def test_a_configuration_error_is_a_500_that_names_no_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:not-a-secret-name"
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DB_SECRET_ARN", arn)
    monkeypatch.setenv("DB_HOST", "db.internal.example")
    runtime.reset()
    try:
        response = call(http_event("GET", "/flags"), LAMBDA_CONTEXT)
    finally:
        runtime.reset()
    assert response.status == 500
    assert response.body["type"] == PROBLEM + "configuration"
    assert response.body["detail"] == "internal error"
    assert response.body["instance"] == LAMBDA_CONTEXT.aws_request_id
    assert "db.internal" not in json.dumps(response.body)
    assert "123456789012" not in json.dumps(response.body)


@pytest.mark.usefixtures("api")
def test_a_bug_is_a_500_problem_that_leaks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(request, "catalog", broken)
    response = call(http_event("GET", "/flags"))
    assert response.status == 500
    assert response.content_type == "application/problem+json"
    assert response.body["type"] == PROBLEM + "internal"
    assert "secret" not in response.body["detail"]


def test_a_database_error_of_no_known_class_is_a_500_not_busy(api: str) -> None:
    # As a missing grant answers (SQLSTATE 42501): retrying cannot help, so no Retry-After.
    assert call(http_event("POST", "/flags", body={"flag_key": "banner"})).status == 201
    with psycopg.connect(api, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " RAISE EXCEPTION 'permission denied for table flag_ramps'"
            " USING ERRCODE = '42501'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON flag_ramps"
            " FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    ramp = {"rollout": [5, 50], "hold_seconds": 600}
    for path, body in (("/flags/banner/ramps", ramp), ("/flags/banner/schedules", None)):
        if body is None:  # the same refusal on the schedules' table
            with psycopg.connect(api, autocommit=True) as conn:
                conn.execute(
                    "CREATE TRIGGER refuse BEFORE INSERT ON feature_flag_schedules"
                    " FOR EACH ROW EXECUTE FUNCTION refuse()"
                )
            body = {"scheduled_at": "2030-01-01T09:00:00Z", "updates": {"enabled": True}}
        response = call(http_event("POST", path, body=body))
        assert (response.status, response.body["type"]) == (500, PROBLEM + "internal"), path
        assert "Retry-After" not in response.headers
        assert "permission" not in response.body["detail"]


def test_a_row_a_run_holds_is_a_503_busy_after_the_lock_timeout(
    api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAG_SCHEDULE_LOCK_TIMEOUT_MS", "200")
    runtime.reset()
    runtime.set_clock(lambda: T0)
    assert call(http_event("POST", "/flags", body={"flag_key": "banner"})).status == 201
    created = call(
        http_event(
            "POST",
            "/flags/banner/schedules",
            body={"scheduled_at": "2030-01-01T09:00:00Z", "updates": {"enabled": True}},
        )
    ).body
    with psycopg.connect(api) as run, run.transaction():
        # As a run holds a claimed schedule until it commits.
        run.execute("SELECT 1 FROM feature_flag_schedules FOR UPDATE")
        started = time.monotonic()
        response = call(http_event("POST", f"/schedules/{created['id']}/cancel"))
        waited = time.monotonic() - started
    assert response.status == 503
    assert response.body["type"] == PROBLEM + "busy"
    assert response.headers["Retry-After"] == "5"
    assert waited < 5
    after = call(http_event("POST", f"/schedules/{created['id']}/cancel"))
    assert after.body["state"] == "cancelled"
