"""Idempotency keys expire: past the retention a replay creates anew, and each create deletes
a bounded batch of expired keys (FLAG_SCHEDULER_API_IDEMPOTENCY_RETENTION_SECONDS)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from flag_scheduler.api import runtime
from flag_scheduler.aws.settings import ApiSettings
from flag_scheduler.store.api_catalog import EXPIRED_KEYS_PER_CREATE
from tests.api.events import call, http_event
from tests.support import T0

pytestmark = pytest.mark.usefixtures("api")

RETENTION = timedelta(seconds=ApiSettings().idempotency_retention_seconds)


def _create(idempotency_key: str, at: datetime, hour: int = 9) -> Any:
    runtime.set_clock(lambda: at)
    response = call(
        http_event(
            "POST",
            "/flags/banner/schedules",
            body={"scheduled_at": f"2030-01-01T{hour:02}:00:00Z", "updates": {"enabled": True}},
            headers={"idempotency-key": idempotency_key},
        )
    )
    assert response.status == 201, response.body
    return response


def _keys(conn: psycopg.Connection[Any]) -> list[tuple[str, datetime]]:
    rows = conn.execute(
        "SELECT idempotency_key, created_at FROM api_idempotency_keys ORDER BY idempotency_key"
    ).fetchall()
    return [(str(key), created_at) for key, created_at in rows]


@pytest.fixture(autouse=True)
def _banner(api: str) -> None:
    assert call(http_event("POST", "/flags", body={"flag_key": "banner"})).status == 201


def test_a_key_is_replayed_within_its_retention() -> None:
    first = _create("deploy-1", T0)
    again = _create("deploy-1", T0 + RETENTION - timedelta(seconds=1))
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.body["id"] == first.body["id"]


def test_past_its_retention_the_same_request_creates_a_new_schedule(
    conn: psycopg.Connection[Any],
) -> None:
    first = _create("deploy-1", T0)
    # Cancelled, so the same change at the same instant is no clash when asked for again.
    assert call(http_event("POST", f"/schedules/{first.body['id']}/cancel")).status == 200
    later = T0 + RETENTION
    again = _create("deploy-1", later)
    assert "Idempotent-Replayed" not in again.headers
    assert again.body["id"] != first.body["id"]
    # The key now names the new schedule, remembered from the new request's time.
    assert _keys(conn) == [("deploy-1", later)]


def test_each_create_deletes_a_bounded_batch_of_expired_keys(
    conn: psycopg.Connection[Any],
) -> None:
    _create("old-0", T0)
    conn.execute(
        "INSERT INTO api_idempotency_keys"
        " (actor, idempotency_key, request_hash, schedule_id, response, created_at)"
        " SELECT 'someone', 'old-' || n, 'h', gen_random_uuid(), '{}', %(at)s"
        " FROM generate_series(1, %(n)s) AS n",
        {"at": T0 + timedelta(seconds=1), "n": EXPIRED_KEYS_PER_CREATE},
    )
    _create("young", T0 + RETENTION - timedelta(seconds=2), hour=10)
    assert len(_keys(conn)) == EXPIRED_KEYS_PER_CREATE + 2  # none expired yet
    now = T0 + RETENTION + timedelta(seconds=1)
    _create("new-1", now, hour=11)
    left = _keys(conn)
    # One batch: the oldest EXPIRED_KEYS_PER_CREATE went, one expired key is left for the next.
    assert len(left) == 3
    assert {key for key, _ in left} >= {"young", "new-1"}
    _create("new-2", now, hour=12)
    assert {key for key, _ in _keys(conn)} == {"young", "new-1", "new-2"}
