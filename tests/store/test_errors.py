"""The one helper every error message goes through to keep a driver's text to one line."""

from __future__ import annotations

import pytest

from flag_scheduler.aws.settings import int_in_range
from flag_scheduler.errors import ConfigurationError, first_line


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        # a driver's multi-line message: only its first line
        (
            RuntimeError("connection refused\nIs the server running?\nDETAIL: x"),
            "connection refused",
        ),
        # surrounding blank lines do not make an empty first line
        (RuntimeError("\n  timeout expired  \n"), "timeout expired"),
        # no message at all: the type names it
        (KeyError(), "KeyError"),
    ],
)
def test_first_line(exc: BaseException, expected: str) -> None:
    assert first_line(exc) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" 7 ", 7),  # blanks around are allowed
        ("0", 0),  # the low end is inclusive
        ("10", 10),  # the high end is inclusive
    ],
)
def test_int_in_range_accepts(raw: str, expected: int) -> None:
    assert int_in_range("N", raw, low=0, high=10) == expected


@pytest.mark.parametrize("raw", ["11", "-1", "1.5", "0x1", "ten", ""])
def test_int_in_range_names_the_variable_and_the_range(raw: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        int_in_range("FLAG_SCHEDULE_X", raw, low=0, high=10)
    assert str(refused.value) == f"FLAG_SCHEDULE_X must be an integer 0..10, got {raw!r}"
