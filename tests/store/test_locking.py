"""Runs meeting other transactions on the same rows: waits, timeouts, a severed connection."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from flag_scheduler.engine.notifier import NullNotifier
from flag_scheduler.engine.records import DueSchedule, RunSummary
from flag_scheduler.engine.run_loop import RunPolicy, process_due_schedules
from flag_scheduler.errors import DatabaseUnavailable
from flag_scheduler.store.catalog import Catalog
from flag_scheduler.store.repository import ScheduleRepository
from tests.support import T0, flag_fields, run_service, schedule_row, wait_for_lock_waiters


class _Run(threading.Thread):
    """A scheduler run in a thread, so the test can act while it waits on a lock."""

    def __init__(self, target: Callable[[], RunSummary]) -> None:
        super().__init__(daemon=True)
        self._target_run = target
        self.summary: RunSummary | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.summary = self._target_run()
        except BaseException as exc:  # handed to the test thread
            self.error = exc


@contextmanager
def _other_transaction(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, application_name="other-writer") as other:
        yield other  # psycopg commits on a clean exit


def _connect_as_scheduler(database_url: str) -> str:
    # run_service connects without an application name; give it the scheduler's.
    separator = "&" if "?" in database_url else "?"
    return f"{database_url}{separator}application_name=flag-scheduler"


def test_a_run_waits_for_a_later_change_being_committed_and_does_not_overwrite_it(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    earlier = catalog.create_schedule(flag, T0, {"enabled": True})
    later = catalog.create_schedule(flag, T0.replace(minute=5), {"enabled": False})
    conn.execute("UPDATE feature_flag_schedules SET status = 'cancelled' WHERE id = %s", (later,))
    url = _connect_as_scheduler(database_url)

    with _other_transaction(database_url) as other:
        # Another run is applying the later change: flag row locked, not yet committed.
        other.execute("SELECT 1 FROM feature_flags WHERE id = %s FOR NO KEY UPDATE", (flag,))
        other.execute("UPDATE feature_flags SET enabled = false WHERE id = %s", (flag,))
        other.execute(
            "UPDATE feature_flag_schedules SET status = 'applied', applied_at = %s WHERE id = %s",
            (T0, later),
        )
        run = _Run(lambda: run_service(url, T0.replace(minute=6), lock_timeout_ms=20_000))
        run.start()
        wait_for_lock_waiters(conn, application_name="flag-scheduler", timeout=20)
    run.join(timeout=30)

    assert run.error is None, run.error
    assert schedule_row(conn, earlier).status == "superseded"
    assert flag_fields(conn, flag)["enabled"] is False


def test_a_flag_locked_past_the_lock_timeout_fails_retryably_and_neighbours_apply(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    locked_flag = catalog.create_flag("locked")
    free_flag = catalog.create_flag("free")
    blocked = catalog.create_schedule(locked_flag, T0, {"enabled": True})
    free = catalog.create_schedule(free_flag, T0, {"enabled": True})

    with _other_transaction(database_url) as other:
        # An application's UPDATE of the flag holds this lock.
        other.execute("SELECT 1 FROM feature_flags WHERE id = %s FOR NO KEY UPDATE", (locked_flag,))
        summary = run_service(database_url, T0, lock_timeout_ms=200)

    row = schedule_row(conn, blocked)
    assert (row.status, row.retry_count) == ("failed", 1)
    assert row.last_error is not None
    assert row.last_error.startswith("lock_timeout: ")
    assert schedule_row(conn, free).status == "applied"
    assert (summary.applied, summary.retried) == (1, 1)


def test_a_connection_severed_mid_batch_fails_the_run_and_charges_no_retry(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flags = [catalog.create_flag(f"flag-{i}") for i in range(3)]
    schedules: list[UUID] = [
        catalog.create_schedule(f, T0.replace(second=i), {"enabled": True})
        for i, f in enumerate(flags)
    ]
    url = _connect_as_scheduler(database_url)

    with _other_transaction(database_url) as other:
        other.execute("SELECT 1 FROM feature_flags WHERE id = %s FOR NO KEY UPDATE", (flags[1],))
        run = _Run(lambda: run_service(url, T0.replace(minute=1), lock_timeout_ms=20_000))
        run.start()
        pid = wait_for_lock_waiters(conn, application_name="flag-scheduler", timeout=20)[0]
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        run.join(timeout=30)

    assert isinstance(run.error, DatabaseUnavailable)
    # The free flags' schedules were committed by a first batch; the held one was handed
    # back and waited for in a second, which the server rolled back: still pending, and
    # not charged a retry.
    rows = [schedule_row(conn, s) for s in schedules]
    assert [(r.status, r.retry_count) for r in rows] == [
        ("applied", 0),
        ("pending", 0),
        ("applied", 0),
    ]
    assert run_service(database_url, T0.replace(minute=1)).applied == 1


def test_writers_can_add_schedules_while_a_run_holds_the_flag(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("banner")
    with _other_transaction(database_url) as other:
        # What the scheduler holds while applying: NO KEY UPDATE on the flag row.
        other.execute("SELECT 1 FROM feature_flags WHERE id = %s FOR NO KEY UPDATE", (flag,))
        conn.execute("SET lock_timeout = '1s'")
        conn.execute(
            "INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates)"
            " VALUES (%s, %s, %s)",
            (flag, T0, Jsonb({"enabled": True})),
        )
    assert run_service(database_url, T0).applied == 1


def test_two_overlapping_runs_over_the_same_flags_finish_every_schedule(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    runs = 2
    flags = [catalog.create_flag(f"flag-{i}") for i in range(20)]
    for i in range(200):
        # Due times interleave flags so each batch touches many flags in due order.
        catalog.create_schedule(
            flags[(i * 7) % 20],
            T0.replace(minute=i % 60, second=i // 60),
            {"rollout_percentage": i % 101},
        )
    threads = [
        _Run(lambda: run_service(database_url, T0.replace(hour=10), batch_size=7))
        for _ in range(runs)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(t.error is None for t in threads), [t.error for t in threads]
    statuses = {r[0] for r in conn.execute("SELECT DISTINCT status FROM feature_flag_schedules")}
    assert statuses <= {"applied", "superseded"}


def test_a_flag_held_for_update_leaves_its_schedules_due_and_uncharged(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    held = catalog.create_flag("held")
    free = catalog.create_flag("free")
    waiting = catalog.create_schedule(held, T0, {"enabled": True})
    applied = catalog.create_schedule(free, T0, {"enabled": True})

    # FOR UPDATE is the lock a DELETE of the flag (or a change of its key) takes: the claim
    # skips the flag's schedules rather than wait for it.
    with _other_transaction(database_url) as other:
        other.execute("SELECT 1 FROM feature_flags WHERE id = %s FOR UPDATE", (held,))
        summary = run_service(database_url, T0, lock_timeout_ms=200)

    assert (summary.claimed, summary.applied, summary.retried) == (1, 1, 0)
    assert (schedule_row(conn, waiting).status, schedule_row(conn, waiting).retry_count) == (
        "pending",
        0,
    )
    assert schedule_row(conn, applied).status == "applied"
    assert run_service(database_url, T0).applied == 1


def test_a_second_run_skips_the_schedules_another_run_has_claimed(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    """Kills the mutant that drops SKIP LOCKED from the claim's schedule lock."""
    flags = [catalog.create_flag(f"flag-{i}") for i in range(4)]
    # The first-due schedule is the one the other run holds: a claim that waited for locked
    # rows would stop at it first.
    held = catalog.create_schedule(flags[0], T0 - timedelta(minutes=1), {"enabled": True})
    others = [catalog.create_schedule(flag, T0, {"enabled": True}) for flag in flags[1:]]

    with psycopg.connect(database_url, autocommit=True) as first:
        repository = ScheduleRepository(first)
        with repository.transaction(
            lock_timeout_ms=200, statement_timeout_ms=10_000, idle_in_transaction_timeout_ms=60_000
        ):
            assert [s.id for s in repository.claim_due(T0, 1)] == [held]
            # With a 200 ms lock timeout, a claim that waited would fail, not merely be slow.
            summary = run_service(database_url, T0, lock_timeout_ms=200)

    assert (summary.claimed, summary.applied) == (3, 3)
    assert [schedule_row(conn, s).status for s in others] == ["applied"] * 3
    assert (schedule_row(conn, held).status, schedule_row(conn, held).retry_count) == (
        "pending",
        0,
    )


class _ClaimThenWaitForDelete(ScheduleRepository):
    """The real repository, except that right after the claim a separate process deletes the
    claimed schedule's flag, and the run goes on only once that DELETE waits for a lock."""

    def __init__(self, conn: psycopg.Connection[Any], database_url: str, flag: UUID) -> None:
        super().__init__(conn)
        self._database_url = database_url
        self._flag = flag
        self.deleter: subprocess.Popen[str] | None = None

    def claim_due(
        self, now: Any, limit: int, *, skip: Any = (), skip_flags: Any = ()
    ) -> list[DueSchedule]:
        claimed = super().claim_due(now, limit, skip=skip, skip_flags=skip_flags)
        if self.deleter is None:
            self.deleter = subprocess.Popen(
                [sys.executable, "-c", _DELETE_FLAG, self._database_url, str(self._flag)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            with psycopg.connect(self._database_url, autocommit=True) as watcher:
                wait_for_lock_waiters(watcher, application_name="flag-deleter", timeout=20)
        return claimed


# A writer deleting a flag, as a separate process: prints what happened.
_DELETE_FLAG = """
import sys, psycopg
with psycopg.connect(sys.argv[1], application_name="flag-deleter") as conn:
    conn.execute("SET deadlock_timeout = '100ms'")
    deleted = conn.execute("DELETE FROM feature_flags WHERE id = %s", (sys.argv[2],)).rowcount
print(f"deleted {deleted}")
"""


def test_deleting_a_flag_while_a_run_holds_its_schedule_waits_for_the_run_without_deadlock(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("doomed")
    schedule = catalog.create_schedule(flag, T0, {"enabled": True})
    other = catalog.create_schedule(catalog.create_flag("kept"), T0, {"enabled": True})

    with psycopg.connect(database_url, autocommit=True) as run_conn:
        # A short deadlock_timeout: a deadlock, if any, is found at once, not after 1 s.
        run_conn.execute("SET deadlock_timeout = '100ms'")
        repository = _ClaimThenWaitForDelete(run_conn, database_url, flag)
        summary = process_due_schedules(
            repository,
            NullNotifier(),
            clock=lambda: T0,
            remaining_ms=lambda: 60_000,
            policy=RunPolicy(lock_timeout_ms=10_000, time_margin_ms=1_000),
        )
    assert repository.deleter is not None
    stdout, stderr = repository.deleter.communicate(timeout=30)

    # The run applied both schedules, charging nothing; then the DELETE went through.
    assert (summary.applied, summary.retried, summary.failed_permanently) == (2, 0, 0)
    assert (repository.deleter.returncode, stdout.strip()) == (0, "deleted 1"), stderr
    assert conn.execute(
        "SELECT count(*) FROM feature_flag_schedules WHERE id = %s", (schedule,)
    ).fetchone() == (0,)
    assert schedule_row(conn, other).status == "applied"
