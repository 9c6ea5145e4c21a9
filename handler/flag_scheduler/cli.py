"""The `flag-scheduler` console script: run the handler locally, or the demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flag_scheduler.errors import ConfigurationError, FlagSchedulerError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_DATA_FOLDER = Path(".flag-scheduler") / "pgdata"


class _UsageError(Exception):
    """The command line or one of its files is wrong."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flag-scheduler",
        description="Apply scheduled feature-flag changes stored in PostgreSQL.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    invoke = commands.add_parser(
        "invoke",
        help="run the Lambda handler once, in this process",
        description="Run the real handler once against DATABASE_URL, or, when it is unset,"
        " against an embedded PostgreSQL kept in --data-dir and migrated automatically.",
    )
    invoke.add_argument("--event", type=Path, help="event JSON file (default: {})")
    invoke.add_argument(
        "--timeout", type=float, default=120.0, help="the fake context's time budget in seconds"
    )
    invoke.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_FOLDER,
        help=f"embedded PostgreSQL data folder (default: {DEFAULT_DATA_FOLDER})",
    )
    commands.add_parser(
        "demo",
        help="walk a simulated clock through apply, retry and permanent failure",
        description="On a throwaway embedded PostgreSQL: create flags and schedules, make"
        " changes fail, and run the real handler minute by minute.",
    )
    return parser


def _read_event(path: Path | None) -> Any:
    if path is None:
        return {}
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise _UsageError(f"cannot read event file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise _UsageError(f"event file {path} is not valid JSON: {exc}") from None


def _invoke(args: argparse.Namespace) -> int:
    event = _read_event(args.event)
    if args.timeout <= 0:
        raise _UsageError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    server = None
    if not os.environ.get("DATABASE_URL", "").strip():
        from flag_scheduler.local import migrate, start_embedded_server

        server = start_embedded_server(args.data_dir.resolve(), throwaway=False)
        url = server.get_uri()
        migrate(url)
        os.environ["DATABASE_URL"] = url
    from flag_scheduler import handler
    from flag_scheduler.local import FakeLambdaContext

    try:
        result = handler.lambda_handler(event, FakeLambdaContext(timeout_seconds=args.timeout))
    finally:
        handler.reset_container()
    print(json.dumps(result, indent=2))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "invoke":
            return _invoke(args)
        from flag_scheduler.demo import run_demo

        run_demo()
        return EXIT_OK
    except (_UsageError, ConfigurationError) as exc:
        print(f"flag-scheduler: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FlagSchedulerError as exc:
        print(f"flag-scheduler: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
