"""Times typed on the command line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from flag_scheduler_cli.timeparse import parse_time

NOW = datetime(2026, 12, 24, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("+15m", NOW + timedelta(minutes=15)),
        ("+2h", NOW + timedelta(hours=2)),
        ("+30s", NOW + timedelta(seconds=30)),
        ("+1d", NOW + timedelta(days=1)),
        ("2026-12-24T09:00:00Z", datetime(2026, 12, 24, 9, tzinfo=UTC)),
        (
            "2026-12-24T10:00:00+01:00",
            datetime(2026, 12, 24, 10, tzinfo=timezone(timedelta(hours=1))),
        ),
    ],
)
def test_accepted_times(text: str, expected: datetime) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-12-24T09:00:00", "has no time zone offset"),  # never guess the zone
        ("tomorrow", "expected an ISO 8601 time with offset"),
        ("+15", "expected an ISO 8601 time with offset"),
        ("-5m", "expected an ISO 8601 time with offset"),
    ],
)
def test_refused_times(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_time(text, NOW)


def test_a_relative_time_beyond_the_last_representable_one_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"later than any time a schedule can hold \(from 0001"):
        parse_time("+3000000d", NOW)
    with pytest.raises(ValueError, match="later than any time"):
        parse_time("+99999999999d", NOW)  # beyond timedelta itself
