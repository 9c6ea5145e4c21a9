"""The rules for flag keys, environments and schedule times, defined once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flag_scheduler.engine import limits
from migrations import schema


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("banner", True),
        ("svc.checkout:v2_beta-1", True),  # every allowed punctuation mark
        ("0", True),  # one character
        ("k" * 128, True),  # the longest
        ("k" * 129, False),
        ("x" * 10_000, False),
        ("", False),
        (" banner", False),  # leading space
        ("banner ", False),  # trailing space
        ("banner\n", False),  # a trailing newline (Python's `$` would let it through)
        ("-banner", False),  # punctuation first
        ("new banner", False),
        ("a/b", False),
        ("bännér", False),  # ASCII only
    ],
)
def test_flag_keys(key: str, valid: bool) -> None:
    assert (limits.flag_key_problem(key) is None) is valid


@pytest.mark.parametrize(
    ("environment", "valid"),
    [
        ("production", True),
        ("eu-west.stage_2", True),
        ("e" * 64, True),
        ("e" * 65, False),
        ("", False),
        ("prod ", False),
        ("a:b", False),  # `:` is for keys only
    ],
)
def test_environments(environment: str, valid: bool) -> None:
    assert (limits.environment_problem(environment) is None) is valid


def test_a_problem_names_the_rule_and_shortens_the_value() -> None:
    problem = limits.flag_key_problem("x" * 10_000)
    assert problem is not None
    assert limits.FLAG_KEY_RULE in problem
    assert "(10000 characters)" in problem
    assert len(problem) < 200


def test_the_time_range_is_the_schemas() -> None:
    assert limits.time_problem(limits.EARLIEST_TIME) is None
    assert limits.time_problem(limits.END_OF_TIME - timedelta(microseconds=1)) is None
    assert limits.time_problem(limits.END_OF_TIME) is not None
    assert limits.time_problem(datetime(1, 1, 1, 23, tzinfo=UTC)) is not None
    check = next(
        c
        for c in schema.feature_flag_schedules.constraints
        if c.name == "ck_feature_flag_schedules_scheduled_at_in_range"
        or getattr(c, "name", None) == "scheduled_at_in_range"
    )
    # The same text migration 0005 installed.
    assert str(check.sqltext) == (  # type: ignore[attr-defined]
        "scheduled_at >= '0001-01-02 00:00:00+00' AND scheduled_at < '9999-12-31 00:00:00+00'"
    )
