"""The connection's maximum age: default and range."""

from __future__ import annotations

import pytest

from flag_scheduler.aws.settings import SchedulerSettings
from flag_scheduler.errors import ConfigurationError


def test_connection_max_age_defaults_to_15_minutes_and_is_validated() -> None:
    assert SchedulerSettings.from_env({}).connection_max_age_seconds == 900
    variable = "FLAG_SCHEDULE_CONNECTION_MAX_AGE_SECONDS"
    assert SchedulerSettings.from_env({variable: "0"}).connection_max_age_seconds == 0
    with pytest.raises(ConfigurationError, match=rf"^{variable} must be an integer 0..86400"):
        SchedulerSettings.from_env({variable: "86401"})
