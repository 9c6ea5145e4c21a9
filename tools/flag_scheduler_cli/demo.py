"""`flag-scheduler demo`: the real handler on a throwaway database, under a simulated clock."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flag_scheduler.engine.states import Status
from flag_scheduler.store import connection
from flag_scheduler.store.catalog import Catalog, ScheduleView
from flag_scheduler_cli import fault_injection
from flag_scheduler_cli.local import FakeLambdaContext, migrate, start_embedded_server

START = datetime(2026, 12, 24, 9, 0, tzinfo=UTC)
TICKS = 12  # one run a minute, as the EventBridge rule does: 09:00 .. 09:11


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
            from flag_scheduler.aws import scheduler

            scheduler.reset_container()
            server.cleanup()


def _walk(url: str, out: Callable[[str], None]) -> None:
    from flag_scheduler.aws import scheduler

    # The demo prints its own story; the handler's JSON logs and EMF metrics would bury it.
    scheduler.logger.setLevel(logging.CRITICAL)
    logging.getLogger("flag_scheduler").setLevel(logging.CRITICAL)
    scheduler.reset_container()

    conn = connection.connect(url)
    catalog = Catalog(conn)
    fault_injection.install(conn)
    banner = catalog.create_flag("holiday-banner")
    checkout = catalog.create_flag("checkout-v2", enabled=True, rollout_percentage=10)
    legacy = catalog.create_flag("legacy-api", enabled=True, rollout_percentage=100)
    search = catalog.create_flag("search-v3", environment="staging")
    plan: list[tuple[str, Any, dict[str, Any], int | None, str]] = [
        ("holiday-banner", banner, {"enabled": True, "rollout_percentage": 100}, None, ""),
        (
            "checkout-v2",
            checkout,
            {"rollout_percentage": 50},
            None,
            "1st attempt: serialization failure",
        ),
        ("legacy-api", legacy, {"enabled": False}, 2, "every attempt: lock timeout; max_retries 2"),
        ("search-v3", search, {"rollout_percentage": 101}, None, "invalid: rollout above 100"),
    ]
    for _, flag_id, updates, max_retries, _ in plan:
        catalog.create_schedule(flag_id, START, updates, max_retries=max_retries)
    fault_injection.set_fault(conn, checkout, "40001", "could not serialize access (injected)")
    fault_injection.set_fault(conn, legacy, "55P03", "lock timeout on legacy-api (injected)")

    out("flag-scheduler demo: throwaway embedded PostgreSQL, the real handler, simulated clock")
    out("backoff: base 120 s, doubling, cap 3600 s, + up to 30 s jitter\n")
    out("Schedules, all due at 09:00 UTC:")
    for name, _, updates, _, note in plan:
        out(f"  {name:<15} {json.dumps(updates):<45} {note}")
    out("")

    before = {view.id: view for view in catalog.schedules()}
    backfill_at = START + timedelta(minutes=4)
    for tick in range(TICKS):
        now = START + timedelta(minutes=tick)
        if now == backfill_at:
            # A writer backfills a change scheduled before one already applied.
            catalog.create_schedule(banner, START - timedelta(minutes=5), {"enabled": False})
            out(
                f"{_hhmmss(now)}  a late writer inserts holiday-banner {{'enabled': false}}"
                " scheduled for 08:55 (before the applied 09:00 change)"
            )
            before = {view.id: view for view in catalog.schedules()}
        summary = scheduler.run_invocation(FakeLambdaContext(), clock=lambda now=now: now)
        scheduler.metrics.clear_metrics()
        after = {view.id: view for view in catalog.schedules()}
        changed = [view for view in after.values() if view != before.get(view.id)]
        if summary["claimed"]:
            out(
                f"{_hhmmss(now)}  run: claimed {summary['claimed']}, applied {summary['applied']},"
                f" retried {summary['retried']}, failed permanently"
                f" {summary['failed_permanently']}, superseded {summary['superseded']}"
                f" ({summary['duration_ms']} ms)"
            )
            for view in changed:
                out(f"           {view.flag_key:<15} {_describe(view)}")
        if tick == 0:
            fault_injection.clear_fault(conn, checkout)
            out("           (the serialization failure on checkout-v2 clears)")
        before = after

    out("\nFinal flag state:")
    for flag in catalog.flags():
        out(
            f"  {flag.flag_key:<15} {flag.environment:<11} enabled={str(flag.enabled).lower():<5}"
            f" rollout={flag.rollout_percentage}"
        )
    out("\nFinal schedules:")
    for view in catalog.schedules():
        out(f"  {view.flag_key:<15} scheduled {_hhmmss(view.scheduled_at)}  {_describe(view)}")
    conn.close()
