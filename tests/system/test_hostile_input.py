"""Hostile input: odd flag keys and environments, and arbitrary JSON as `updates`. Every
invalid document ends as a permanent invalid_updates failure with a clear message, every
valid one applies, and the run never crashes.

Since migration 0008 the database refuses new flags with such keys; flags written before it
keep them, so the engine must still handle them: `_before_the_name_rule` writes them as an
older database holds them."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flag_scheduler.aws import scheduler
from flag_scheduler.engine.records import MAX_UPDATES_BYTES
from flag_scheduler.store.catalog import Catalog
from flag_scheduler_cli.local import FakeLambdaContext
from tests.support import T0, flag_fields, run_service, schedule_row

# (flag_ramps references feature_flags: TRUNCATE takes every table of the chain at once.)
TABLES = (
    "feature_flag_schedule_attempts, feature_flag_schedules, feature_flags,"
    " flag_ramp_events, flag_ramps"
)
HOSTILE_TEXT = [
    "it's",  # a quote
    'say "hi"',
    "a; DROP TABLE feature_flags; --",  # a semicolon and SQL
    "back\\slash\\",  # backslashes
    "%(flag_id)s %s {} $1",  # placeholders of every driver
    "ünïcødé 旗 🚩 \u200b\u202e",  # non-ASCII, zero-width and right-to-left marks
    "line\nbreak\ttab\r",
    "x" * 1000,  # long
    "🚩" * 1000,  # long, 4 bytes a character
]
# No NUL (PostgreSQL text cannot hold it) and no lone surrogates (not UTF-8).
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


@contextmanager
def _before_the_name_rule(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Flags written in this block skip 0008's name trigger, as rows older than it did."""
    conn.execute("SET session_replication_role = replica")  # user triggers do not fire
    try:
        yield
    finally:
        conn.execute("RESET session_replication_role")


def test_hostile_keys_and_environments_apply_and_log_exactly(
    database_url: str,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    monkeypatch: pytest.MonkeyPatch,
    logs: io.StringIO,
) -> None:
    due = datetime.now(UTC) - timedelta(minutes=1)
    created = {}
    for i, key in enumerate(HOSTILE_TEXT):
        for environment in (key, HOSTILE_TEXT[(i + 1) % len(HOSTILE_TEXT)]):
            with _before_the_name_rule(conn):
                flag = catalog.create_flag(key, environment=environment)
            created[(key, environment)] = (
                flag,
                catalog.create_schedule(flag, due, {"enabled": True}),
            )
    monkeypatch.setenv("DATABASE_URL", database_url)

    result = scheduler.lambda_handler({}, FakeLambdaContext())

    assert result["applied"] == len(created)
    logged = {
        (event["flag_key"], event["environment"])
        for event in map(json.loads, logs.getvalue().splitlines())
        if event["message"] == "schedule_applied"
    }
    assert logged == set(created)  # every key and environment logged exactly, as JSON
    for flag, schedule in created.values():
        assert schedule_row(conn, schedule).status == "applied"
        assert flag_fields(conn, flag)["enabled"] is True
    assert conn.execute("SELECT count(*) FROM feature_flags").fetchone() == (len(created),)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(keys=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=5, unique=True))
def test_generated_keys_and_environments_apply(
    database_url: str, conn: psycopg.Connection[Any], keys: list[tuple[str, str]]
) -> None:
    conn.execute(f"TRUNCATE {TABLES}")
    catalog = Catalog(conn)
    with _before_the_name_rule(conn):
        flags = [catalog.create_flag(key, environment=env) for key, env in keys]
    schedules = [catalog.create_schedule(f, T0, {"rollout_percentage": 33}) for f in flags]
    assert run_service(database_url, T0).applied == len(keys)
    assert all(schedule_row(conn, s).status == "applied" for s in schedules)


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(10**400), 10**400)  # far past 64 bits
    | st.sampled_from([0, 1, 50, 100, 101, -1, 2**63, 10**308])
    | st.floats(allow_nan=False, allow_infinity=False)  # JSON has no NaN or Infinity
    | st.sampled_from([0.0, 50.0, 99.9, 1e308, -0.0])
    | TEXT
    | st.builds(lambda n: "x" * n, st.sampled_from([MAX_UPDATES_BYTES, 1 << 20]))  # to 1 MiB
)
ANY_JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
# Near misses: the right keys (and some wrong ones) with any value; and valid documents.
UPDATES = st.one_of(
    ANY_JSON,
    st.dictionaries(
        st.sampled_from(["enabled", "rollout_percentage", "Enabled", "rollout", ""]),
        ANY_JSON,
        max_size=3,
    ),
    st.fixed_dictionaries(
        {}, optional={"enabled": st.booleans(), "rollout_percentage": st.integers(0, 100)}
    ),
)
CLEAR_MESSAGE = re.compile(
    r"invalid_updates: (updates is \d+ bytes; the limit is 4096"
    r"|updates must be a JSON object, got \w+"
    r"|updates cannot be decoded: \w+"
    r"|invalid updates: .+)",
    re.DOTALL,
)


def _valid(document: Any, size: int) -> bool:
    """The contract, written independently of the scheduler's validator."""
    if size > MAX_UPDATES_BYTES or not isinstance(document, dict) or not document:
        return False
    if not set(document) <= {"enabled", "rollout_percentage"}:
        return False
    if "enabled" in document and not isinstance(document["enabled"], bool):
        return False
    rollout = document.get("rollout_percentage", 0)
    return type(rollout) is int and 0 <= rollout <= 100


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(documents=st.lists(UPDATES, min_size=1, max_size=6))
def test_arbitrary_json_updates_never_crash_a_run(
    database_url: str, conn: psycopg.Connection[Any], documents: list[Any]
) -> None:
    conn.execute(f"TRUNCATE {TABLES}")
    catalog = Catalog(conn)
    schedules = []
    for i, document in enumerate(documents):
        flag = catalog.create_flag(f"flag-{i}")
        schedules.append((flag, catalog.create_schedule(flag, T0, document)))

    summary = run_service(database_url, T0)  # must not raise

    valid = 0
    for flag, schedule in schedules:
        # Judge the document as stored: jsonb normalises numbers (1E2 is 100, 50.0 stays).
        stored, size = conn.execute(
            "SELECT updates, octet_length(updates::text) FROM feature_flag_schedules WHERE id = %s",
            (schedule,),
        ).fetchone() or (None, 0)
        row = schedule_row(conn, schedule)
        if _valid(stored, size):
            valid += 1
            assert row.status == "applied", (stored, row)
            fields = flag_fields(conn, flag)
            assert {k: fields[k] for k in stored} == stored
        else:
            assert (row.status, row.next_retry_at, row.retry_count) == ("failed", None, 0), stored
            assert row.last_error is not None
            assert CLEAR_MESSAGE.fullmatch(row.last_error), row.last_error[:300]
            assert len(row.last_error) <= 1100  # bounded, however large the document
    assert (summary.applied, summary.failed_permanently) == (valid, len(documents) - valid)


def test_a_document_nested_thousands_deep_is_invalid_not_a_crash(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    deep = "[" * 5000 + "]" * 5000  # over the size limit: refused unread
    small_but_deep = '{"enabled": ' + "[" * 1500 + "true" + "]" * 1500 + "}"  # under it
    flag = catalog.create_flag("deep")
    ids = []
    for text in (deep, small_but_deep):
        row = conn.execute(
            "INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates)"
            " VALUES (%s, %s, %s::jsonb) RETURNING id",
            (flag, T0, text),
        ).fetchone()
        assert row is not None
        ids.append(row[0])
    good = catalog.create_schedule(catalog.create_flag("good"), T0, {"enabled": True})

    summary = run_service(database_url, T0)

    assert summary.failed_permanently == 2
    for schedule in ids:
        row = schedule_row(conn, schedule)
        assert (row.status, row.next_retry_at) == ("failed", None)
        assert row.last_error is not None
        assert row.last_error.startswith("invalid_updates: ")
    assert schedule_row(conn, good).status == "applied"
