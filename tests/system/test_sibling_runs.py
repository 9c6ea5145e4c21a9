"""Two handler processes over the same flags while an application holds one: waiting on a
sibling run is never charged to a schedule; waiting on the application still is."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from flag_scheduler.store.catalog import Catalog
from tests.support import history, schedule_row, wait_for_lock_waiters
from tests.system import audit

pytestmark = pytest.mark.slow

# Flags both runs need: as many as the default outage threshold.
SHARED = 5
# The advisory lock key the pause trigger waits for.
PAUSE_KEY = 4_206_009

# Makes the run that writes one flag stop inside that write, holding every flag of its
# batch, until the test lets go of PAUSE_KEY. lock_timeout is lifted for the pause only,
# so the paused run stops for as long as the test says, not for its lock timeout.
INSTALL_PAUSE = """
CREATE FUNCTION pause_flag_write() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    previous text := current_setting('lock_timeout');
BEGIN
    PERFORM set_config('lock_timeout', '0', true);
    PERFORM pg_advisory_xact_lock_shared(%(key)s);
    PERFORM set_config('lock_timeout', previous, true);
    RETURN NEW;
END $$;
CREATE TRIGGER pause_flag_write BEFORE UPDATE ON feature_flags
    FOR EACH ROW WHEN (NEW.id = '%(flag)s') EXECUTE FUNCTION pause_flag_write();
"""


@dataclass(frozen=True)
class _Scenario:
    shared: list[UUID]  # flags both runs need
    held: UUID  # the flag the application holds
    first: list[UUID]  # run A's schedules on the shared flags
    on_held: UUID  # run A's schedule on the held flag
    second: list[UUID]  # run B's schedules on the shared flags


def _scenario(catalog: Catalog) -> _Scenario:
    """Five shared flags and the application's flag, which sorts last: a run that takes
    flags in id order has locked the five by the time it waits for it.

    Run A's batch: one schedule on each shared flag, and one on the application's flag.
    Run B's: one more on each shared flag, due only once the test says so.
    All with max_retries 0, so a charged wait fails them for good (and five such failures
    in a row look like an outage); the application's flag's schedule has one retry, so its
    lock_timeout shows as a retryable failure.
    """
    flags = sorted(catalog.create_flag(f"flag-{i}") for i in range(SHARED + 1))
    shared, held = flags[:SHARED], flags[SHARED]
    now = datetime.now(UTC)
    first = [
        catalog.create_schedule(f, now - timedelta(minutes=10), {"enabled": True}, max_retries=0)
        for f in shared
    ]
    on_held = catalog.create_schedule(
        held, now - timedelta(minutes=10), {"enabled": True}, max_retries=1
    )
    second = [
        catalog.create_schedule(
            f, now + timedelta(days=1), {"rollout_percentage": 50}, max_retries=0
        )
        for f in shared
    ]
    return _Scenario(shared, held, first, on_held, second)


@contextmanager
def _application_holding(database_url: str, flag: UUID) -> Iterator[None]:
    """An application's transaction holding the flag's row lock until the block ends."""
    with psycopg.connect(database_url, application_name="orders-service") as app:
        app.execute("SELECT 1 FROM feature_flags WHERE id = %s FOR NO KEY UPDATE", (flag,))
        yield


def _make_due(conn: psycopg.Connection[Any], schedules: list[UUID]) -> None:
    conn.execute(
        "UPDATE feature_flag_schedules SET scheduled_at = %s WHERE id = ANY(%s)",
        (datetime.now(UTC) - timedelta(minutes=5), schedules),
    )


def _finish(process: subprocess.Popen[str]) -> str:
    """The run's summary, or why it failed."""
    stdout, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        summary = json.loads(stdout[stdout.index("{\n") :])
        return ", ".join(f"{key} {summary[key]}" for key in ("claimed", "applied", "retried"))
    return f"exit {process.returncode}: {stderr.strip().splitlines()[-1:]}"


def _charged(conn: psycopg.Connection[Any], schedules: list[UUID]) -> list[UUID]:
    """The schedules charged an attempt: a retry counted, a failure, or any history row."""
    return [
        s
        for s in schedules
        if schedule_row(conn, s).retry_count
        or schedule_row(conn, s).status not in ("pending", "applied")
        or any(outcome != "applied" for _, outcome, _ in history(conn, s))
    ]


def test_a_run_waiting_for_an_application_lock_keeps_no_sibling_waiting(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    scene = _scenario(catalog)
    audit.install(conn, write_delay_seconds=0)

    with _application_holding(database_url, scene.held):
        # A waits for the application's flag for longer than this test takes...
        run_a = audit.start_invoker(
            database_url,
            FLAG_SCHEDULE_BATCH_SIZE=str(SHARED + 1),
            FLAG_SCHEDULE_LOCK_TIMEOUT_MS="60000",
        )
        wait_for_lock_waiters(conn, application_name="flag-scheduler", timeout=60)
        # ...and B, needing the shared flags meanwhile, gives up on a lock after 300 ms.
        _make_due(conn, scene.second)
        run_b = audit.start_invoker(database_url, FLAG_SCHEDULE_LOCK_TIMEOUT_MS="300")
        summary_b = _finish(run_b)
        assert run_a.poll() is None, "A stopped waiting before B was done: no overlap"
    summary_a = _finish(run_a)  # the application committed: A takes its flag

    charged = _charged(conn, scene.second)
    assert not charged, f"{len(charged)} of {SHARED} charged; A: {summary_a}; B: {summary_b}"
    assert summary_b == f"claimed {SHARED}, applied {SHARED}, retried 0"
    assert summary_a == f"claimed {SHARED + 1}, applied {SHARED + 1}, retried 0"
    everything = [*scene.first, scene.on_held, *scene.second]
    assert [schedule_row(conn, s).status for s in everything] == ["applied"] * (2 * SHARED + 1)
    audit.check_exactly_once(conn)


def test_a_sibling_holding_flags_past_the_lock_timeout_charges_nothing(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    scene = _scenario(catalog)
    audit.install(conn, write_delay_seconds=0)
    # A stops while writing the last shared flag, holding them all, for as long as the
    # test says: far past B's lock timeout, whatever the machine's speed.
    pause_at = scene.shared[-1]
    conn.execute(
        INSTALL_PAUSE.replace("%(key)s", str(PAUSE_KEY)).replace("%(flag)s", str(pause_at))
    )
    with psycopg.connect(database_url, autocommit=True, application_name="pause") as pause:
        pause.execute("SELECT pg_advisory_lock(%s)", (PAUSE_KEY,))
        with _application_holding(database_url, scene.held):
            run_a = audit.start_invoker(
                database_url,
                FLAG_SCHEDULE_BATCH_SIZE=str(SHARED + 1),
                FLAG_SCHEDULE_LOCK_TIMEOUT_MS="1000",
                FLAG_SCHEDULE_STATEMENT_TIMEOUT_MS="120000",
            )
            wait_for_lock_waiters(
                conn, application_name="flag-scheduler", wait_event="advisory", timeout=60
            )
            _make_due(conn, scene.second)
            run_b = audit.start_invoker(database_url, FLAG_SCHEDULE_LOCK_TIMEOUT_MS="200")
            summary_b = _finish(run_b)
            assert run_a.poll() is None, "A was not paused while B ran"
            # B is done, and was kept off the shared flags for good: nothing charged.
            charged_while_a_held_them = _charged(conn, scene.second)
            pause.execute("SELECT pg_advisory_unlock(%s)", (PAUSE_KEY,))
            # A finishes its batch, then waits its full lock timeout for the application.
            summary_a = _finish(run_a)

    charged = charged_while_a_held_them
    assert not charged, f"{len(charged)} of {SHARED} charged; A: {summary_a}; B: {summary_b}"
    assert summary_b == "claimed 0, applied 0, retried 0"  # all handed back
    # A: its batch; then B's schedules (free again) and, a full lock timeout later, the
    # application's flag's schedule, charged.
    assert summary_a == f"claimed {2 * SHARED + 1}, applied {2 * SHARED}, retried 1"
    assert _charged(conn, scene.second) == []
    assert [schedule_row(conn, s).status for s in scene.first] == ["applied"] * SHARED
    # Left due by B, and applied since (by A's next batch): never charged either way.
    assert {schedule_row(conn, s).status for s in scene.second} <= {"pending", "applied"}
    row = schedule_row(conn, scene.on_held)
    assert (row.status, row.retry_count) == ("failed", 1)
    assert row.next_retry_at is not None
    assert row.last_error is not None
    assert row.last_error.startswith("lock_timeout: ")
    assert history(conn, scene.on_held) == [(1, "retry_scheduled", "lock_timeout")]
    audit.check_exactly_once_or_waiting(conn)
