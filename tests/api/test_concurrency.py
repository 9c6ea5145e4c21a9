"""Idempotency and keyset paging with requests in real OS processes on one database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import psycopg
import pytest

from tests.api.events import call, http_event

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("api")]

# The advisory lock key store/sql.py's LOCK_FLAG_FOR_PLANNING takes for a flag.
PLANNING_LOCK = "hashtextextended(%(flag_id)s::text, 8675309)"


@dataclass
class Worker:
    """A worker process; its output goes to files (a full pipe would stall it)."""

    process: subprocess.Popen[str]
    out: IO[str]
    err: IO[str]

    def poll(self) -> int | None:
        return self.process.poll()


def _start(database_url: str, events: list[dict[str, Any]]) -> Worker:
    env = {**os.environ, "DATABASE_URL": database_url, "POWERTOOLS_METRICS_DISABLED": "true"}
    # Closed by _results, once the worker is done.
    out = tempfile.TemporaryFile("w+")  # noqa: SIM115
    err = tempfile.TemporaryFile("w+")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.api.worker", json.dumps(events)],
        env=env,
        stdout=out,
        stderr=err,
        text=True,
    )
    return Worker(process, out, err)


def _results(worker: Worker) -> list[dict[str, Any]]:
    worker.process.wait(timeout=120)
    worker.out.seek(0)
    worker.err.seek(0)
    assert worker.process.returncode == 0, worker.err.read()
    lines = worker.out.read().splitlines()
    worker.out.close()
    worker.err.close()
    return [json.loads(line) for line in lines]


def _wait_for_waiters(conn: psycopg.Connection[Any], count: int) -> None:
    """Until `count` sessions wait for an advisory lock (the requests are all in flight)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
        if row is not None and row[0] >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} requests reached the lock")


def _wait_for_rows(conn: psycopg.Connection[Any], count: int, inserter: Worker) -> int:
    """Until the table holds `count` schedules or the inserter is done; returns the count."""
    deadline = time.monotonic() + 60
    while True:
        row = conn.execute("SELECT count(*) FROM feature_flag_schedules").fetchone()
        assert row is not None
        if row[0] >= count or inserter.poll() is not None or time.monotonic() > deadline:
            return int(row[0])
        time.sleep(0.005)


def _flag_id(key: str) -> str:
    response = call(http_event("POST", "/flags", body={"flag_key": key}))
    assert response.status == 201, response.body
    return str(response.body["id"])


def _schedule_event(key: str, idempotency_key: str, **body: Any) -> dict[str, Any]:
    return http_event(
        "POST",
        f"/flags/{key}/schedules",
        body={"scheduled_at": "2030-01-01T09:00:00Z", "updates": {"enabled": True}, **body},
        headers={"idempotency-key": idempotency_key},
    )


def test_concurrent_duplicates_create_one_schedule(api: str) -> None:
    flag_id = _flag_id("banner")
    event = _schedule_event("banner", "deploy-42")
    with psycopg.connect(api, autocommit=True) as conn:
        # Hold the flag's planning lock so every request is in flight before any proceeds.
        conn.execute(f"SELECT pg_advisory_lock({PLANNING_LOCK})", {"flag_id": flag_id})
        workers = [_start(api, [event]) for _ in range(6)]
        _wait_for_waiters(conn, 6)
        conn.execute(f"SELECT pg_advisory_unlock({PLANNING_LOCK})", {"flag_id": flag_id})
        results = [result for worker in workers for result in _results(worker)]
        rows = conn.execute("SELECT count(*) FROM feature_flag_schedules").fetchone()
    assert rows == (1,)
    assert {r["status"] for r in results} == {201}
    assert len({r["body"]["id"] for r in results}) == 1
    assert sorted(r["replayed"] for r in results) == [False] + [True] * 5


def test_same_key_different_request_is_422_even_when_concurrent(api: str) -> None:
    # Two flags: no shared planning lock, so the key's primary key decides (ON CONFLICT).
    ids = [_flag_id("a"), _flag_id("b")]
    with psycopg.connect(api, autocommit=True) as conn:
        for flag_id in ids:
            conn.execute(f"SELECT pg_advisory_lock({PLANNING_LOCK})", {"flag_id": flag_id})
        workers = [_start(api, [_schedule_event(key, "k-1")]) for key in ("a", "b")]
        _wait_for_waiters(conn, 2)
        for flag_id in ids:
            conn.execute(f"SELECT pg_advisory_unlock({PLANNING_LOCK})", {"flag_id": flag_id})
        results = sorted(
            (r for worker in workers for r in _results(worker)), key=lambda r: r["status"]
        )
        rows = conn.execute("SELECT count(*) FROM feature_flag_schedules").fetchone()
    assert rows == (1,)
    assert [r["status"] for r in results] == [201, 422]
    assert results[1]["body"]["type"] == "urn:flag-scheduler:problem:idempotency-key-reused"


def test_replay_and_reuse_in_sequence() -> None:
    _flag_id("banner")
    first = call(_schedule_event("banner", "k"))
    again = call(_schedule_event("banner", "k"))
    assert (first.status, again.status) == (201, 201)
    assert again.body == first.body
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = call(_schedule_event("banner", "k", max_retries=1))
    assert (other.status, other.body["type"]) == (
        422,
        "urn:flag-scheduler:problem:idempotency-key-reused",
    )
    # A replay after a cancel: the same schedule, as it is now, with its first warnings.
    assert call(http_event("POST", f"/schedules/{first.body['id']}/cancel")).status == 200
    late = call(_schedule_event("banner", "k"))
    assert (late.status, late.headers.get("Idempotent-Replayed")) == (201, "true")
    assert (late.body["id"], late.body["state"]) == (first.body["id"], "cancelled")
    assert late.body["warnings"] == first.body["warnings"]
    # Another caller's key of the same name is another key.
    mine = _schedule_event("banner", "k", updates={"rollout_percentage": 1})
    mine["requestContext"]["authorizer"]["jwt"]["claims"] = {"sub": "someone-else"}
    mine["requestContext"]["authorizer"]["jwt"]["scopes"] = ["flags:write"]
    assert call(mine).status == 201


def test_pages_stay_stable_while_rows_are_inserted(api: str) -> None:
    _flag_id("banner")
    start = datetime(2030, 1, 1, tzinfo=UTC)

    def at(minutes: int) -> str:
        return (start + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")

    originals = []
    for n in range(0, 200, 5):
        response = call(
            http_event(
                "POST",
                "/flags/banner/schedules",
                body={"scheduled_at": at(n), "updates": {"rollout_percentage": n % 101}},
            )
        )
        originals.append(response.body["id"])
    # Another process inserts between (and before, and after) the rows being paged.
    inserts = [
        http_event(
            "POST",
            "/flags/banner/schedules",
            body={"scheduled_at": at(n), "updates": {"enabled": n % 2 == 0}},
        )
        for n in range(1, 200, 2)
    ]
    inserter = _start(api, inserts)
    seen: list[str] = []
    cursor = None
    grew_between_pages = 0
    with psycopg.connect(api, autocommit=True) as conn:
        count = _wait_for_rows(conn, len(originals) + 3, inserter)
        while True:
            query = {"limit": "7", **({"cursor": cursor} if cursor else {})}
            page = call(http_event("GET", "/schedules", query=query)).body
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            # Let the other process insert a few rows before the next page.
            latest = _wait_for_rows(conn, count + 3, inserter)
            grew_between_pages += latest > count
            count = latest
        inserted = _results(inserter)
        total = conn.execute("SELECT count(*) FROM feature_flag_schedules").fetchone()
    assert {r["status"] for r in inserted} == {201}
    assert grew_between_pages >= 3, "the inserts did not overlap the paging"
    assert total == (len(originals) + len(inserts),)
    assert len(seen) == len(set(seen)), "a row was repeated"
    assert set(originals) <= set(seen), "a row that existed before paging began was skipped"


def test_concurrent_clashing_changes_create_one(api: str) -> None:
    # Two different requests setting `enabled` at one instant, no idempotency key: the
    # per-flag planning lock makes the second see the first, so it is refused (409).
    flag_id = _flag_id("banner")
    bodies = [{"enabled": True}, {"enabled": False}]
    events = [
        http_event(
            "POST",
            "/flags/banner/schedules",
            body={"scheduled_at": "2030-01-01T09:00:00Z", "updates": updates},
        )
        for updates in bodies
    ]
    with psycopg.connect(api, autocommit=True) as conn:
        conn.execute(f"SELECT pg_advisory_lock({PLANNING_LOCK})", {"flag_id": flag_id})
        workers = [_start(api, [event]) for event in events]
        _wait_for_waiters(conn, 2)
        conn.execute(f"SELECT pg_advisory_unlock({PLANNING_LOCK})", {"flag_id": flag_id})
        statuses = sorted(r["status"] for worker in workers for r in _results(worker))
        rows = conn.execute("SELECT count(*) FROM feature_flag_schedules").fetchone()
    assert (statuses, rows) == ([201, 409], (1,))


def test_a_key_whose_schedule_is_gone_starts_afresh(api: str) -> None:
    _flag_id("banner")
    first = call(_schedule_event("banner", "k"))
    with psycopg.connect(api, autocommit=True) as conn:
        # Writers may empty the contract tables; the key table does not stop them.
        conn.execute("TRUNCATE feature_flag_schedules, feature_flag_schedule_attempts")
    again = call(_schedule_event("banner", "k"))
    assert again.status == 201
    assert again.body["id"] != first.body["id"]
    assert "Idempotent-Replayed" not in again.headers
