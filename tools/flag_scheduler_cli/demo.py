"""`flag-scheduler demo`: the real handler on a throwaway database, under a simulated clock."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg

from flag_scheduler.aws import scheduler
from flag_scheduler.engine.states import Status
from flag_scheduler.store import connection
from flag_scheduler.store.catalog import Catalog, ScheduleView
from flag_scheduler_cli import demo_ramps, fault_injection
from flag_scheduler_cli.local import FakeLambdaContext, migrate, start_embedded_server

START = datetime(2026, 12, 24, 9, 0, tzinfo=UTC)
TICKS = 12  # one run a minute, as the EventBridge rule does: 09:00 .. 09:11
# When a writer backfills a change scheduled before one already applied.
BACKFILL_AT = START + timedelta(minutes=4)


def _hhmmss(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%H:%M:%S") if moment else "-"


def _describe(view: ScheduleView) -> str:
    if view.status == Status.APPLIED:
        note = f"applied at {_hhmmss(view.applied_at)}"
        if view.retry_count:
            note += f" after {view.retry_count} retr{'y' if view.retry_count == 1 else 'ies'}"
        return note
    if view.status == Status.FAILED and view.next_retry_at is not None:
        return (
            f"failed, retry {view.retry_count} due at {_hhmmss(view.next_retry_at)}"
            f"  ({view.last_error})"
        )
    if view.status == Status.FAILED:
        return f"FAILED PERMANENTLY after {view.retry_count} retries  ({view.last_error})"
    return view.status


@dataclass(frozen=True)
class _Planned:
    """One schedule of the story: its flag, its change and what will go wrong."""

    name: str
    flag_id: UUID
    updates: dict[str, Any]
    max_retries: int | None
    note: str


def run_demo(out: Callable[[str], None] = print) -> None:
    """Create flags and schedules, inject faults, and walk the clock minute by minute."""
    with tempfile.TemporaryDirectory(prefix="flag-scheduler-demo-") as folder:
        server = start_embedded_server(Path(folder) / "pgdata", throwaway=True)
        url = server.get_uri()
        migrate(url)
        os.environ["DATABASE_URL"] = url
        try:
            _walk(url, out)
        finally:
            scheduler.reset_container()
            server.cleanup()


def _walk(url: str, out: Callable[[str], None]) -> None:
    # The demo prints its own story; the handler's JSON logs and EMF metrics would bury it.
    scheduler.logger.setLevel(logging.CRITICAL)
    logging.getLogger("flag_scheduler").setLevel(logging.CRITICAL)
    scheduler.reset_container()

    conn = connection.connect(url)
    catalog = Catalog(conn)
    fault_injection.install(conn)
    plan = _plan(catalog, conn)
    out("flag-scheduler demo: throwaway embedded PostgreSQL, the real handler, simulated clock")
    out("backoff: base 120 s, doubling, cap 3600 s, + up to 30 s jitter\n")
    out("Schedules, all due at 09:00 UTC:")
    for planned in plan:
        out(f"  {planned.name:<15} {json.dumps(planned.updates):<45} {planned.note}")
    out("")
    _run_the_clock(catalog, conn, {planned.name: planned.flag_id for planned in plan}, out)
    _print_the_end(catalog, out)
    demo_ramps.walk(catalog, conn, out)
    conn.close()


def _plan(catalog: Catalog, conn: psycopg.Connection[Any]) -> list[_Planned]:
    """Create the flags and their schedules, all due at START, and the faults they meet."""
    banner = catalog.create_flag("holiday-banner")
    checkout = catalog.create_flag("checkout-v2", enabled=True, rollout_percentage=10)
    legacy = catalog.create_flag("legacy-api", enabled=True, rollout_percentage=100)
    search = catalog.create_flag("search-v3", environment="staging")
    plan = [
        _Planned("holiday-banner", banner, {"enabled": True, "rollout_percentage": 100}, None, ""),
        _Planned(
            "checkout-v2",
            checkout,
            {"rollout_percentage": 50},
            None,
            "1st attempt: serialization failure",
        ),
        _Planned(
            "legacy-api",
            legacy,
            {"enabled": False},
            2,
            "every attempt: lock timeout; max_retries 2",
        ),
        _Planned(
            "search-v3", search, {"rollout_percentage": 101}, None, "invalid: rollout above 100"
        ),
    ]
    for planned in plan:
        catalog.create_schedule(
            planned.flag_id, START, planned.updates, max_retries=planned.max_retries
        )
    fault_injection.set_fault(conn, checkout, "40001", "could not serialize access (injected)")
    fault_injection.set_fault(conn, legacy, "55P03", "lock timeout on legacy-api (injected)")
    return plan


def _run_the_clock(
    catalog: Catalog,
    conn: psycopg.Connection[Any],
    flags: dict[str, UUID],
    out: Callable[[str], None],
) -> None:
    """One handler run a minute; print what each run changed."""
    before = _views(catalog)
    for tick in range(TICKS):
        now = START + timedelta(minutes=tick)
        if now == BACKFILL_AT:
            catalog.create_schedule(
                flags["holiday-banner"], START - timedelta(minutes=5), {"enabled": False}
            )
            out(
                f"{_hhmmss(now)}  a late writer inserts holiday-banner {{'enabled': false}}"
                " scheduled for 08:55 (before the applied 09:00 change)"
            )
            before = _views(catalog)
        summary = scheduler.run_invocation(FakeLambdaContext(), clock=lambda now=now: now)
        scheduler.metrics.clear_metrics()
        after = _views(catalog)
        if summary["claimed"]:
            changed = [view for view in after.values() if view != before.get(view.id)]
            _print_run(now, summary, changed, out)
        if tick == 0:
            fault_injection.clear_fault(conn, flags["checkout-v2"])
            out("           (the serialization failure on checkout-v2 clears)")
        before = after


def _views(catalog: Catalog) -> dict[UUID, ScheduleView]:
    return {view.id: view for view in catalog.schedules()}


def _print_run(
    now: datetime, summary: dict[str, Any], changed: list[ScheduleView], out: Callable[[str], None]
) -> None:
    out(
        f"{_hhmmss(now)}  run: claimed {summary['claimed']}, applied {summary['applied']},"
        f" retried {summary['retried']}, failed permanently"
        f" {summary['failed_permanently']}, superseded {summary['superseded']}"
        f" ({summary['duration_ms']} ms)"
    )
    for view in changed:
        out(f"           {view.flag_key:<15} {_describe(view)}")


def _print_the_end(catalog: Catalog, out: Callable[[str], None]) -> None:
    out("\nFinal flag state:")
    for flag in catalog.flags():
        out(
            f"  {flag.flag_key:<15} {flag.environment:<11} enabled={str(flag.enabled).lower():<5}"
            f" rollout={flag.rollout_percentage}"
        )
    out("\nFinal schedules:")
    for view in catalog.schedules():
        out(f"  {view.flag_key:<15} scheduled {_hhmmss(view.scheduled_at)}  {_describe(view)}")
