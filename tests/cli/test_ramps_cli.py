"""`flag-scheduler ramps ...` as operators run it: subprocesses on a real PostgreSQL."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from flag_scheduler.store.catalog import Catalog
from flag_scheduler_cli import render
from flag_scheduler_cli.timeparse import parse_duration
from tests.support import (
    Cli,
    ramp_action_timeouts,
    record_ramp_action_timeouts,
    row_counts,
    run_service,
)

RAMP = ("ramps", "create", "--flag", "checkout-v2", "--rollout", "5,25,50,100", "--hold", "30m")


def ramp_rows(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """The ramps and their events, with the schedules and flags: equal before and after, a
    command wrote nothing."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM flag_ramps),"
        " (SELECT string_agg(state, ',' ORDER BY id) FROM flag_ramps),"
        " (SELECT count(*) FROM flag_ramp_events)"
    ).fetchone()
    assert row is not None
    return (*row, *row_counts(conn))


@pytest.fixture
def flag(catalog: Catalog) -> None:
    catalog.create_flag("checkout-v2", enabled=True)


@pytest.mark.usefixtures("flag")
def test_create_list_show_and_preview(cli: Cli) -> None:
    created = cli.json(*RAMP, "--guard-alarm", "checkout-5xx", "--guard-alarm", "latency")
    ramp = created["ramp"]
    assert (ramp["state"], ramp["current_stage"], ramp["guard_alarms"]) == (
        "active",
        0,
        ["checkout-5xx", "latency"],
    )
    assert (ramp["insufficient_data"], ramp["rollback_on_alarm"]) == ("wait", False)
    assert [w["name"] for w in created["preview"]] == ["0", "1", "2", "3"]
    first, second = created["preview"][:2]
    assert _seconds(second["earliest"]) - _seconds(first["earliest"]) == 1800

    listed = cli.json("ramps", "list", "--state", "active")
    assert [r["id"] for r in listed] == [ramp["id"]]
    # the stage as show says it, in its column
    header, row = cli.ok("ramps", "list").splitlines()
    assert row.index("  0 of 0..3  ") + 2 == header.index("STAGE")
    assert row.index(created["ramp"]["starts_at"][:10]) == header.index("STARTS")
    assert cli.json("ramps", "list", "--state", "paused") == []

    shown = cli.json("ramps", "show", ramp["id"])
    assert [(s["stage"], s["state"]) for s in shown["schedules"]] == [(0, "pending")]
    assert [(e["action"], e["actor"].startswith("cli")) for e in shown["events"]] == [
        ("created", True)
    ]
    text = cli.ok("ramps", "show", ramp["id"])
    assert "state:        active, stage 0 of 0..3" in text
    assert "checkout-5xx, latency (ALARM: halt; INSUFFICIENT_DATA: wait)" in text

    previewed = cli.json("ramps", "preview", ramp["id"])
    assert [w["name"] for w in previewed["preview"]] == ["0", "1", "2", "3"]


@pytest.mark.usefixtures("flag")
def test_list_says_when_its_limit_cut_it(cli: Cli, catalog: Catalog) -> None:
    catalog.create_flag("search-v3", enabled=True)
    older = cli.json(*RAMP)["ramp"]["id"]
    newer = cli.json("ramps", "create", "--flag", "search-v3", "--rollout", "50", "--hold", "1h")
    assert [r["id"] for r in cli.json("ramps", "list", "--limit", "1")] == [newer["ramp"]["id"]]
    _, row, more = cli.ok("ramps", "list", "--limit", "1").splitlines()
    assert row.startswith(newer["ramp"]["id"])
    assert more == "(the first 1 shown; more match: --limit N shows more, or narrow the filter)"
    # two ramps, a limit of two: nothing more to say
    assert len(cli.ok("ramps", "list", "--limit", "2").splitlines()) == 3
    assert older in cli.ok("ramps", "list", "--limit", "2")


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@pytest.mark.usefixtures("flag")
def test_pause_resume_abort_with_rollback(cli: Cli, conn: psycopg.Connection[Any]) -> None:
    ramp_id = cli.json(*RAMP, "--start", "+10m")["ramp"]["id"]
    paused = cli.json("ramps", "pause", ramp_id)["ramp"]
    assert paused["state"] == "paused"
    # the ten minutes to stage 0 were kept (less the seconds the commands took)
    assert 590 < paused["paused_remaining_seconds"] <= 600
    assert "is paused; cannot pause" in cli.fails(1, "ramps", "pause", ramp_id)
    resumed = cli.json("ramps", "resume", ramp_id)
    assert (resumed["ramp"]["state"], resumed["stage"]) == ("active", 0)
    shown = cli.json("ramps", "show", ramp_id)["schedules"]
    assert resumed["schedule_id"] in [s["schedule_id"] for s in shown if s["state"] == "pending"]
    assert "is active; cannot resume" in cli.fails(1, "ramps", "resume", ramp_id)
    # as if stage 0 had applied: the engine took the value before the ramp
    before = {"enabled": True, "rollout_percentage": 0}
    conn.execute("UPDATE flag_ramps SET value_before = %s", (Jsonb(before),))
    aborted = cli.json("ramps", "abort", ramp_id, "--rollback")
    assert aborted["ramp"]["state"] == "aborted"
    rollback = cli.json("schedules", "show", aborted["rollback_schedule_id"])["schedule"]
    # only the field the stages set is rolled back
    assert (rollback["status"], rollback["updates"]) == ("pending", {"rollout_percentage": 0})
    assert "is aborted; cannot abort" in cli.fails(1, "ramps", "abort", ramp_id)
    events = cli.json("ramps", "show", ramp_id)["events"]
    assert [e["action"] for e in events] == [
        "created",
        "paused",
        "resumed",
        "aborted",
        "rolled_back",
    ]
    # every operator action names its operator (the CLI's actor: cli:<user>)
    actors = {e["actor"] for e in events if e["action"] != "rolled_back"}
    assert len(actors) == 1
    assert actors.pop().startswith("cli:")


@pytest.mark.usefixtures("flag")
@pytest.mark.parametrize(
    ("code", "args", "expected"),
    [
        # a rollout outside 0..100 and a hold under a minute: both named, one line
        (
            2,
            ("--rollout", "5,101", "--hold", "30s"),
            "invalid ramp: stage 0: hold 30s is outside 1 minute..366 days (60..31622400 s);"
            " stage 1: rollout 101 is outside 0..100; stage 1: hold 30s",
        ),
        # a stage that changes nothing (the flag is at 0 already)
        (
            2,
            ("--rollout", "0,50", "--hold", "5m"),
            "stage 0 sets nothing: rollout_percentage=0 is already the flag's current value",
        ),
        # 21 stages
        (
            2,
            ("--rollout", ",".join(["1"] * 21), "--hold", "5m"),
            "invalid ramp: a ramp has 1..20 stages, got 21",
        ),
        # not numbers
        (2, ("--rollout", "5,half", "--hold", "5m"), "--rollout: expected whole percentages"),
        (2, ("--rollout", "5,50", "--hold", "soon"), "--hold: expected a duration such as 30m"),
        (2, ("--rollout", "5,50", "--hold", "5m,5m,5m"), "one per stage (2), got 3"),
        (
            2,
            ("--rollout", "5,50", "--hold", "90"),
            "flag-scheduler: error: --hold: '90' has no unit; write 90s, 90m, 90h or 90d",
        ),
        # a start stage 0 could only expire at
        (2, ("--rollout", "5", "--hold", "5m", "--start", "2020-01-01T00:00:00Z"), "expire"),
        # the same guard alarm twice
        (
            2,
            ("--rollout", "5", "--hold", "5m", "--guard-alarm", "x", "--guard-alarm", "x"),
            "invalid ramp: guard alarm named twice: x",
        ),
        # a rollout below 0, first: argparse took "-5,25" for an option
        (
            2,
            ("--rollout", "-5,25", "--hold", "5m"),
            "flag-scheduler: error: invalid ramp: stage 0: rollout -5 is outside 0..100",
        ),
        # a rollback on alarm without any guard alarm
        (
            2,
            ("--rollout", "5", "--hold", "5m", "--rollback-on-alarm"),
            "flag-scheduler: error: invalid ramp: rollback_on_alarm needs at least one guard alarm",
        ),
        # no such flag
        (1, ("--rollout", "5", "--hold", "5m", "--env", "staging"), "no flag 'checkout-v2'"),
    ],
)
def test_bad_ramps_are_one_line_and_write_nothing(
    cli: Cli, conn: psycopg.Connection[Any], code: int, args: tuple[str, ...], expected: str
) -> None:
    before = ramp_rows(conn)
    line = cli.fails(code, "ramps", "create", "--flag", "checkout-v2", *args)
    assert expected in line
    assert ramp_rows(conn) == before


@pytest.mark.usefixtures("flag")
def test_a_start_in_a_time_zone_is_checked_as_schedules_create_checks_it(cli: Cli) -> None:
    plan = ("--flag", "checkout-v2", "--rollout", "5,50", "--hold", "30m")
    base = ("ramps", "create", *plan, "--time-zone", "Europe/Berlin")
    # without a zone, a time without offset names both ways to give one
    assert cli.fails(2, "ramps", "create", *plan, "--start", "2030-12-24T09:00").endswith(
        "--start: '2030-12-24T09:00' has no time zone offset; add one (Z or +01:00), or name"
        " its zone with --time-zone, instead of letting flag-scheduler guess"
    )
    gap = cli.fails(2, *base, "--start", "2030-03-31T02:30")
    assert "--start: 2030-03-31T02:30 does not exist in Europe/Berlin" in gap
    overlap = cli.fails(2, *base, "--start", "2030-10-27T02:30")
    assert "--start: 2030-10-27T02:30 happens twice in Europe/Berlin" in overlap
    assert "say which with fold" in overlap
    assert "--time-zone: 'Europe/Berlim' is not an IANA time zone name" in cli.fails(
        2, *base[:-1], "Europe/Berlim", "--start", "2030-12-24T09:00"
    )
    assert "--fold needs --time-zone" in cli.fails(2, "ramps", "create", *plan, "--fold", "1")
    zoned = ("--time-zone", "Europe/Berlin", "--start", "2030-12-24T09:00")
    preview = cli.json("ramps", "preview", *plan[2:], *zoned)
    assert preview["preview"][0]["earliest"] == "2030-12-24T08:00:00Z"  # CET
    created = cli.json(*base, "--start", "2030-10-27T02:30", "--fold", "1")
    assert created["ramp"]["starts_at"] == "2030-10-27T01:30:00Z"  # CET, the second 02:30


@pytest.mark.usefixtures("flag")
def test_a_falling_rollout_is_created_with_a_warning(cli: Cli) -> None:
    text = cli.ok("ramps", "create", "--flag", "checkout-v2", "--rollout", "50,20", "--hold", "5m")
    assert "warning: stage 1 lowers the rollout from 50 to 20" in text


@pytest.mark.usefixtures("flag")
def test_a_second_ramp_of_the_flag_is_refused(cli: Cli) -> None:
    first = cli.json(*RAMP)["ramp"]["id"]
    line = cli.fails(1, *RAMP)
    assert f"already has an unfinished ramp ({first}, active)" in line


@pytest.mark.usefixtures("flag")
def test_plain_schedule_cancel_refuses_a_ramps_stage(
    cli: Cli, conn: psycopg.Connection[Any]
) -> None:
    ramp_id = cli.json(*RAMP, "--start", "+10m")["ramp"]["id"]
    row = conn.execute(
        "SELECT id FROM feature_flag_schedules WHERE ramp_id = %s", (ramp_id,)
    ).fetchone()
    assert row is not None
    line = cli.fails(1, "schedules", "cancel", str(row[0]))
    assert f"is stage 0 of ramp {ramp_id}" in line
    assert "`flag-scheduler ramps pause|resume|abort " in line


@pytest.mark.usefixtures("flag")
def test_ramp_actions_run_with_the_configured_timeouts(
    cli: Cli, conn: psycopg.Connection[Any], database_url: str
) -> None:
    # Not multiples of a second, so SHOW prints them in ms; the defaults are 5 s and 30 s.
    cli.env["FLAG_SCHEDULE_LOCK_TIMEOUT_MS"] = "1234"
    cli.env["FLAG_SCHEDULE_STATEMENT_TIMEOUT_MS"] = "23456"
    record_ramp_action_timeouts(conn)
    ramp_id = cli.json(*RAMP, "--start", "+10m")["ramp"]["id"]
    for action in ("pause", "resume", "abort"):
        cli.ok("ramps", action, ramp_id)
    assert ramp_action_timeouts(conn) == [
        (action, "1234ms", "23456ms") for action in ("created", "paused", "resumed", "aborted")
    ]
    cli.env["FLAG_SCHEDULE_LOCK_TIMEOUT_MS"] = "200"
    ramp_id = cli.json(*RAMP, "--start", "+10m")["ramp"]["id"]
    with psycopg.connect(database_url) as run, run.transaction():
        # As a run advancing the ramp holds its row until it commits.
        run.execute("SELECT 1 FROM flag_ramps FOR UPDATE")
        started = time.monotonic()
        line = cli.fails(1, "ramps", "pause", ramp_id)
        waited = time.monotonic() - started
    assert line == (
        "flag-scheduler: error: database: canceling statement due to lock timeout"
        " (a scheduler run or another operator holds these rows; try again in a moment)"
    )
    assert waited < 5  # the default lock timeout alone (5 s) would be longer


def test_unknown_ramp_and_bad_id(cli: Cli) -> None:
    zero = "00000000-0000-0000-0000-000000000000"
    for action in ("show", "pause", "resume", "abort", "preview"):
        assert f"no ramp with id {zero}" in cli.fails(1, "ramps", action, zero)
    assert "not a ramp id (a UUID): 'x'" in cli.fails(2, "ramps", "show", "x")


def test_preview_of_a_plan_needs_no_database(cli: Cli) -> None:
    cli.env["DATABASE_URL"] = "postgresql://nobody@/none?host=/nonexistent"
    data = cli.json(
        "ramps", "preview", "--rollout", "5,50,20", "--hold", "10m,1h,1h",
        "--start", "2026-12-24T09:00:00Z",
    )  # fmt: skip
    assert data["warnings"] == ["stage 2 lowers the rollout from 50 to 20"]
    assert [(w["name"], w["earliest"]) for w in data["preview"]] == [
        ("0", "2026-12-24T09:00:00Z"),
        ("1", "2026-12-24T09:10:00Z"),
        ("2", "2026-12-24T10:10:00Z"),
    ]
    # the default policy (3 retries: +120 s, +240 s, +480 s, each + up to 30 s jitter)
    assert data["preview"][0]["latest"] == "2026-12-24T09:15:30Z"
    assert "give a ramp id, or a plan" in cli.fails(2, "ramps", "preview", "--rollout", "5")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("1h30m", 5400), ("2d", 172_800), ("90s", 90), ("1H", 3600)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("seconds", [60, 90, 1800, 3630, 5400, 129_600, 172_800, 366 * 86_400])
def test_a_shown_duration_reads_back_as_a_hold(seconds: int) -> None:
    assert parse_duration(render.duration(seconds)) == seconds


def test_holds_are_in_days_in_tables_and_messages_alike(cli: Cli) -> None:
    plan = ("ramps", "preview", "--rollout", "5,50", "--start", "2026-12-24T09:00:00Z")
    table = cli.ok(*plan, "--hold", "2d,1d12h")
    assert "0      rollout_percentage=5   2d     2026-12-24 09:00:00Z" in table
    assert "1      rollout_percentage=50  1d12h  2026-12-26 09:00:00Z" in table
    assert cli.fails(2, *plan, "--hold", "367d").endswith(
        "invalid ramp: stage 0: hold 367d is outside 1 minute..366 days (60..31622400 s);"
        " stage 1: hold 367d is outside 1 minute..366 days (60..31622400 s)"
    )


@pytest.mark.parametrize("text", ["", "m", "1x", "-5m", "30m1h", "1.5h"])
def test_not_durations(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # seconds or minutes? A bare number is refused, naming the units to write.
        ("90", "'90' has no unit; write 90s, 90m, 90h or 90d"),
        ("120", "'120' has no unit; write 120s, 120m, 120h or 120d"),
        # the last number lacks its unit: the next smaller one is suggested
        ("1h30", "got '1h30'; did you mean 1h30m?"),
        ("2d12", "got '2d12'; did you mean 2d12h?"),
        ("1m30", "got '1m30'; did you mean 1m30s?"),
    ],
)
def test_a_number_without_its_unit_is_refused_naming_the_units(text: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_duration(text)
    assert str(raised.value).endswith(message)


def test_an_end_state_is_one_more_stage_after_the_last_hold(
    cli: Cli, catalog: Catalog, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    catalog.create_flag("dark-mode")
    created = cli.json(
        "ramps", "create", "--flag", "dark-mode", "--rollout", "10,100", "--hold", "5m",
        "--enable", "--end-disable", "--start", "2026-12-24T09:00:00Z",
    )  # fmt: skip
    assert created["ramp"]["end_updates"] == {"enabled": False}
    assert created["ramp"]["stages"][0]["updates"] == {"enabled": True, "rollout_percentage": 10}
    assert [(w["name"], w["earliest"]) for w in created["preview"]] == [
        ("0", "2026-12-24T09:00:00Z"),
        ("1", "2026-12-24T09:05:00Z"),
        ("end", "2026-12-24T09:10:00Z"),
    ]
    start = datetime.fromisoformat("2026-12-24T09:00:00+00:00")
    for minutes in (0, 5, 10):
        run_service(database_url, start + timedelta(minutes=minutes))
    shown = cli.json("ramps", "show", created["ramp"]["id"])
    assert shown["ramp"]["state"] == "completed"
    assert [(s["stage"], s["state"]) for s in shown["schedules"]] == [
        (0, "applied"),
        (1, "applied"),
        (2, "applied"),
    ]
    assert catalog.get_flag("dark-mode").enabled is False
    assert "end sets nothing" in cli.fails(
        2, "ramps", "preview", "--rollout", "10,100", "--hold", "5m", "--end-rollout", "100"
    )


@pytest.mark.usefixtures("flag")
def test_a_halted_ramp_shows_its_error_class_once(cli: Cli, database_url: str) -> None:
    ramp_id = cli.json(*RAMP, "--start", "2030-01-01T00:00:00Z")["ramp"]["id"]
    # two days late, past the lateness limit (a day): stage 0 expires and halts the ramp
    run_service(database_url, datetime.fromisoformat("2030-01-03T00:00:00+00:00"))
    state = next(
        line for line in cli.ok("ramps", "show", ramp_id).splitlines() if line.startswith("state:")
    )
    assert state.startswith("state:        halted, stage 0 of 0..3 (expired: not applied"), state
    assert state.count("expired") == 1, state


@pytest.mark.usefixtures("flag")
def test_abort_says_the_rollback_it_scheduled(cli: Cli, conn: psycopg.Connection[Any]) -> None:
    ramp_id = cli.json(*RAMP, "--start", "+10m")["ramp"]["id"]
    conn.execute(
        "UPDATE flag_ramps SET value_before = %s",
        (Jsonb({"enabled": True, "rollout_percentage": 0}),),
    )
    said = cli.ok("ramps", "abort", ramp_id, "--rollback")
    # the stages set only the rollout: enabled is neither rolled back nor said to be
    assert said.rstrip().endswith("scheduled now: rollout_percentage=0"), said


def test_insufficient_data_halt_and_rollback_on_alarm_are_kept(cli: Cli, catalog: Catalog) -> None:
    catalog.create_flag("guarded")
    ramp = cli.json(
        "ramps",
        "create",
        "--flag",
        "guarded",
        "--rollout",
        "10,100",
        "--hold",
        "5m",
        "--guard-alarm",
        "errors",
        "--insufficient-data",
        "halt",
        "--rollback-on-alarm",
    )["ramp"]
    assert (ramp["insufficient_data"], ramp["rollback_on_alarm"]) == ("halt", True)
    assert "INSUFFICIENT_DATA: halt" in cli.ok("ramps", "show", ramp["id"])
    assert "invalid choice: 'stop'" in cli.fails(
        2,
        "ramps",
        "create",
        "--flag",
        "guarded",
        "--rollout",
        "10",
        "--hold",
        "5m",
        "--guard-alarm",
        "errors",
        "--insufficient-data",
        "stop",
    )
