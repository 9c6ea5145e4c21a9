"""Failures the caller cannot fix: a problem document, never a bare gateway error."""

from __future__ import annotations

import pytest

from flag_scheduler.api import request, runtime
from tests.api.events import call, http_event

PROBLEM = "urn:flag-scheduler:problem:"


def test_unreachable_database_is_503(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@/postgres?host={tmp_path}")
    monkeypatch.delenv("DB_SECRET_ARN", raising=False)
    runtime.reset()
    try:
        response = call(http_event("GET", "/flags"))
    finally:
        runtime.reset()
    assert response.status == 503
    assert response.body["type"] == PROBLEM + "database-unavailable"
    assert "cannot connect to the database" in response.body["detail"]


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
