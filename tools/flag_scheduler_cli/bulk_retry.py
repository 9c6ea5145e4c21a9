"""The arguments of `flag-scheduler schedules retry-failed`: the API's POST /schedules/retry
(requeue every permanently failed schedule matching a filter) for operators."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from flag_scheduler.engine.states import ErrorClass
from flag_scheduler_cli.arguments import int_in

COMMAND = "retry-failed"


def _aware_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time with offset (2026-12-24T09:00:00Z), got {text!r}"
        )
    return moment


def add_parser(schedule_commands: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `schedules retry-failed` with the filter POST /schedules/retry takes."""
    bulk: argparse.ArgumentParser = schedule_commands.add_parser(
        COMMAND,
        parents=[common],
        help="requeue every permanently failed (or expired) schedule matching a filter",
    )
    state = bulk.add_mutually_exclusive_group()
    state.add_argument("--expired", dest="expired", action="store_true", default=None)
    state.add_argument(
        "--failed-permanently", dest="expired", action="store_false", help="not expired ones"
    )
    bulk.add_argument("--flag", metavar="KEY")
    bulk.add_argument("--env")
    bulk.add_argument("--error-class", choices=[e.value for e in ErrorClass], metavar="CLASS")
    bulk.add_argument("--since", type=_aware_time, metavar="TIME", help="failed at or after")
    bulk.add_argument("--before", type=_aware_time, metavar="TIME", help="failed before")
    bulk.add_argument("--limit", type=int_in(1, 1000), default=1000, metavar="1..1000")
    bulk.add_argument("--dry-run", action="store_true", help="list them, change nothing")
    return bulk
