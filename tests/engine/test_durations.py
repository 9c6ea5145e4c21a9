"""One way to write a duration, for the CLI's tables and the rules' messages alike."""

from __future__ import annotations

import pytest

from flag_scheduler.engine.durations import duration_text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (90, "1m30s"),
        (1800, "30m"),
        (1798, "29m58s"),
        (3600, "1h"),
        (3630, "1h00m30s"),
        (5400, "1h30m"),
        (172_800, "2d"),  # not 48h00m00s
        (129_600, "1d12h"),
        (367 * 86_400, "367d"),  # not 528480m00s
        (-125, "-2m05s"),
    ],
)
def test_days_first_and_no_trailing_zero_units(seconds: int, text: str) -> None:
    assert duration_text(seconds) == text
