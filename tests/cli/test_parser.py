"""The CLI's parser: each command names the function that runs it (no database here)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from flag_scheduler_cli.cli import EXIT_OK, _negative_lists_joined, _parser, main

COMMANDS = {
    ("migrate",),
    ("flags", "list"),
    ("flags", "create"),
    ("flags", "show"),
    ("schedules", "create"),
    ("schedules", "list"),
    ("schedules", "show"),
    ("schedules", "retry"),
    ("schedules", "cancel"),
    ("schedules", "retry-failed"),
    ("schedules", "preview"),
    ("ramps", "create"),
    ("ramps", "list"),
    ("ramps", "show"),
    ("ramps", "pause"),
    ("ramps", "resume"),
    ("ramps", "abort"),
    ("ramps", "preview"),
    ("status",),
    ("invoke",),
    ("demo",),
    ("serve",),
    ("completion",),
}


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable command: the parsers with no subcommands below them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))
            return
    yield path, parser


def test_every_command_names_its_handler() -> None:
    handlers = {path: parser.get_default("func") for path, parser in _commands(_parser())}
    assert handlers.keys() == COMMANDS
    assert all(callable(handler) for handler in handlers.values()), handlers


def test_a_policy_preview_needs_no_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    argv = ["schedules", "preview", "--max-retries", "1", "--from", "2026-01-01T00:00:00Z"]
    assert main([*argv, "--base", "60", "--cap", "600", "--jitter", "5"]) == EXIT_OK
    assert capsys.readouterr().out.splitlines() == [
        "policy: max_retries 1, base 60 s, cap 600 s, jitter 5 s",
        "ATTEMPT  EARLIEST              LATEST                BACKOFF",
        "1        2026-01-01 00:00:00Z  2026-01-01 00:00:00Z",
        "2        2026-01-01 00:01:00Z  2026-01-01 00:01:05Z  +1m",
        "if every attempt fails: permanently failed between 2026-01-01 00:01:00Z and"
        " 2026-01-01 00:01:05Z",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["schedules", "retry-failed", "--limit", "²"], "must be an integer 1..1000, got '²'"),
        (["schedules", "retry-failed", "--limit", "1001"], "must be an integer 1..1000"),
        (["serve", "--port", "65536"], "must be an integer 0..65535"),
        (["ramps", "show", "nope"], "not a ramp id (a UUID): 'nope'"),
        (["schedules", "show", "nope"], "not a schedule id (a UUID): 'nope'"),
    ],
)
def test_a_bad_number_or_id_is_a_usage_error_saying_what_it_must_be(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_rollout_list_starting_with_a_minus_reaches_the_range_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # not argparse's "expected one argument": the rule the value breaks
    assert main(["ramps", "preview", "--rollout", "-5,25", "--hold", "5m"]) == 2
    assert capsys.readouterr().err == (
        "flag-scheduler: error: invalid ramp: stage 0: rollout -5 is outside 0..100\n"
    )
    # after `--`, nothing is rewritten
    assert _negative_lists_joined(["--rollout", "-5,25", "--", "--rollout", "-1"]) == [
        "--rollout=-5,25",
        "--",
        "--rollout",
        "-1",
    ]
