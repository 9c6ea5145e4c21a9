"""The connection's maximum age and the statement budget: defaults, ranges, arithmetic."""

from __future__ import annotations

import pytest

from flag_scheduler.config import Settings
from flag_scheduler.engine.run_loop import RunPolicy, statement_budget_ms
from flag_scheduler.errors import ConfigurationError


def test_connection_max_age_defaults_to_15_minutes_and_is_validated() -> None:
    assert Settings.from_env({}).connection_max_age_seconds == 900
    variable = "FLAG_SCHEDULE_CONNECTION_MAX_AGE_SECONDS"
    assert Settings.from_env({variable: "0"}).connection_max_age_seconds == 0
    with pytest.raises(ConfigurationError, match=rf"^{variable} must be an integer 0..86400"):
        Settings.from_env({variable: "86401"})


@pytest.mark.parametrize(
    ("configured", "remaining", "expected"),
    [
        (30_000, 600_000, 30_000),  # plenty of time: the configured timeout
        (30_000, 25_000, 15_000),  # 25 s left, 10 s margin: 15 s
        (30_000, 10_500, 1_000),  # almost into the margin: the 1 s floor
        (500, 10_500, 500),  # a configured timeout below the floor stays as configured
    ],
)
def test_statement_budget_never_reaches_into_the_margin(
    configured: int, remaining: int, expected: int
) -> None:
    policy = RunPolicy(statement_timeout_ms=configured, time_margin_ms=10_000)
    assert statement_budget_ms(policy, remaining) == expected
