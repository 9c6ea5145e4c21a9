"""A ramp's checks at creation and its preview (pure, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flag_scheduler.engine.backoff import BackoffPolicy
from flag_scheduler.engine.limits import END_OF_TIME
from flag_scheduler.engine.ramp_rules import (
    InvalidRamp,
    RetryRules,
    StagePlan,
    check_ramp,
    preview,
)

START = datetime(2026, 12, 24, 9, 0, tzinfo=UTC)
FLAG = {"enabled": True, "rollout_percentage": 0}


def stages(*rollouts: int, hold: Any = 1800) -> list[dict[str, Any]]:
    return [{"updates": {"rollout_percentage": r}, "hold_seconds": hold} for r in rollouts]


def problems(stage_documents: object, **options: Any) -> list[str]:
    with pytest.raises(InvalidRamp) as raised:
        check_ramp(stage_documents, flag=options.pop("flag", FLAG), start=START, **options)
    return raised.value.problems


def test_a_rollback_on_alarm_needs_a_guard_alarm() -> None:
    assert problems(stages(5), rollback_on_alarm=True) == [
        "rollback_on_alarm needs at least one guard alarm"
    ]
    check_ramp(stages(5), flag=FLAG, start=START, guard_alarms=["5xx"], rollback_on_alarm=True)


def test_a_plain_ramp_passes_without_warnings() -> None:
    checked = check_ramp(stages(5, 25, 50, 100), flag=FLAG, start=START)
    assert [stage.updates for stage in checked.stages] == [
        {"rollout_percentage": r} for r in (5, 25, 50, 100)
    ]
    assert checked.warnings == ()
    assert checked.end_updates is None


@pytest.mark.parametrize(
    ("documents", "expected"),
    [
        # no stage at all
        ([], ["a ramp has 1..20 stages, got 0"]),
        # one too many
        (stages(*range(1, 22)), ["a ramp has 1..20 stages, got 21"]),
        # not a list
        ({"updates": {}}, ["a ramp has 1..20 stages, got dict"]),
        # a hold under a minute, and one that is not a number
        (
            [*stages(5, hold=59), *stages(10, hold="30m")],
            [
                "stage 0: hold 59s is outside 1 minute..366 days (60..31622400 s)",
                "stage 1: hold_seconds must be a whole number, got '30m'",
            ],
        ),
        # holds beyond 366 days: in days; an absurd one only said to be too long
        (
            [*stages(5, hold=367 * 86_400), *stages(10, hold=99999999999999999999999)],
            [
                "stage 0: hold 367d is outside 1 minute..366 days (60..31622400 s)",
                "stage 1: hold is far beyond 366 days (60..31622400 s)",
            ],
        ),
        # rollouts outside 0..100, each named
        (
            stages(5, 101, -1),
            ["stage 1: rollout 101 is outside 0..100", "stage 2: rollout -1 is outside 0..100"],
        ),
        # an updates document the engine would refuse
        (
            [{"updates": {"colour": "red"}, "hold_seconds": 60}],
            [
                "stage 0: invalid updates: colour: unknown key"
                " (allowed: enabled, rollout_percentage)"
            ],
        ),
        # a stage of the wrong shape
        (
            [{"updates": {"rollout_percentage": 5}}],
            ['stage 0: expected {"updates": {...}, "hold_seconds": N}'],
        ),
    ],
)
def test_each_mistake_is_one_line(documents: object, expected: list[str]) -> None:
    assert problems(documents) == expected


def test_a_stage_that_sets_nothing_is_refused() -> None:
    # stage 0 against the flag's value; stage 2 against stage 1
    assert problems(stages(0, 25, 25)) == [
        "stage 0 sets nothing: rollout_percentage=0 is already the flag's current value",
        "stage 2 sets nothing: rollout_percentage=25 is already the value after stage 1",
    ]


def test_a_stage_setting_one_new_field_among_old_ones_passes() -> None:
    documents = [
        {"updates": {"rollout_percentage": 5}, "hold_seconds": 60},
        {"updates": {"rollout_percentage": 5, "enabled": False}, "hold_seconds": 60},
    ]
    assert check_ramp(documents, flag=FLAG, start=START).warnings == ()


def test_an_end_state_that_sets_nothing_is_refused() -> None:
    assert problems(stages(5, 100), end_updates={"rollout_percentage": 100}) == [
        "end sets nothing: rollout_percentage=100 is already the value after stage 1"
    ]


def test_a_falling_rollout_is_a_warning_not_a_refusal() -> None:
    checked = check_ramp(
        stages(50, 25), flag=FLAG, start=START, end_updates={"rollout_percentage": 0}
    )
    assert checked.warnings == (
        "stage 1 lowers the rollout from 50 to 25",
        "end lowers the rollout from 25 to 0",
    )


def test_a_ramp_ending_after_the_end_of_time_is_refused() -> None:
    late = END_OF_TIME - timedelta(hours=1)
    with pytest.raises(InvalidRamp, match="end after the last time a schedule can hold"):
        check_ramp(stages(5, 25), flag=FLAG, start=late)


def test_the_message_joins_the_lines() -> None:
    with pytest.raises(InvalidRamp) as raised:
        check_ramp(stages(101, hold=1), flag=FLAG, start=START)
    assert str(raised.value) == (
        "invalid ramp: stage 0: rollout 101 is outside 0..100;"
        " stage 0: hold 1s is outside 1 minute..366 days (60..31622400 s)"
    )


NO_JITTER = RetryRules(BackoffPolicy(120, 3600, 0), max_retries=3, max_lateness_seconds=0)


def plans(*holds: int) -> list[StagePlan]:
    return [StagePlan({"rollout_percentage": 10 * n}, hold) for n, hold in enumerate(holds, 1)]


def test_preview_adds_each_holds_and_each_stages_retries() -> None:
    windows = preview(plans(600, 600, 600), start=START, end_updates=None, retry=NO_JITTER)
    # retries: +120 s, +240 s, +480 s = 14 min after the due time at the latest
    assert [(w.name, w.earliest - START, w.latest - START) for w in windows] == [
        ("0", timedelta(0), timedelta(minutes=14)),
        ("1", timedelta(minutes=10), timedelta(minutes=14 + 10 + 14)),
        ("2", timedelta(minutes=20), timedelta(minutes=2 * 24 + 14)),
    ]
    assert {w.latest_by for w in windows} == {"retries"}


def test_preview_counts_the_whole_jitter_and_the_end_state() -> None:
    retry = RetryRules(BackoffPolicy(120, 3600, 30), max_retries=2, max_lateness_seconds=0)
    windows = preview(plans(60), start=START, end_updates={"enabled": False}, retry=retry)
    assert [w.name for w in windows] == ["0", "end"]
    assert windows[0].latest - START == timedelta(seconds=120 + 240 + 2 * 30)
    assert windows[1].earliest - START == timedelta(seconds=60)
    assert windows[1].latest - START == timedelta(seconds=2 * (420 + 60) - 60 + 0)


def test_preview_stops_at_the_lateness_limit() -> None:
    retry = RetryRules(BackoffPolicy(3600, 3600, 0), max_retries=10, max_lateness_seconds=7200)
    windows = preview(plans(60, 60), start=START, end_updates=None, retry=retry)
    assert (windows[0].latest - START, windows[0].latest_by) == (timedelta(hours=2), "lateness")
    assert windows[1].latest - START == timedelta(hours=4, minutes=1)


def test_preview_saturates_at_the_end_of_time() -> None:
    start = END_OF_TIME - timedelta(minutes=5)
    windows = preview(plans(60, 60), start=start, end_updates=None, retry=NO_JITTER)
    # no OverflowError: attempts past the end of time are cut, as a schedule's preview cuts them
    assert all(w.latest < END_OF_TIME for w in windows)


def test_without_a_flag_stages_are_still_compared_with_each_other() -> None:
    # a plan's preview knows no flag: stage 0 is never "nothing", the later ones still are
    checked = check_ramp(stages(0, 50, 20), flag={}, start=START)
    assert checked.warnings == ("stage 2 lowers the rollout from 50 to 20",)
    assert problems(stages(0, 0), flag={}) == [
        "stage 1 sets nothing: rollout_percentage=0 is already the value after stage 0"
    ]


def test_guard_alarm_names() -> None:
    names = ["checkout-5xx", "", "checkout-5xx", *(f"a{n}" for n in range(18))]
    assert problems(stages(5), guard_alarms=names) == [
        "a ramp has at most 20 guard alarms, got 21",
        "guard alarm '': a CloudWatch alarm name is 1..255 printable characters",
        "guard alarm named twice: checkout-5xx",
    ]
    assert check_ramp(stages(5), flag=FLAG, start=START, guard_alarms=["a", "b"]).warnings == ()
