"""Settings from the environment: defaults, and clear errors for bad values."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from flag_scheduler.aws.settings import SchedulerSettings, check_powertools_environment
from flag_scheduler.errors import ConfigurationError


def test_defaults_match_the_design() -> None:
    settings = SchedulerSettings.from_env({})
    assert settings.max_retries == 3
    assert (settings.backoff.base_seconds, settings.backoff.cap_seconds) == (120, 3600)
    assert settings.backoff.jitter_seconds == 30
    assert settings.database_url is None


def test_values_are_read_from_the_environment() -> None:
    settings = SchedulerSettings.from_env(
        {
            "DATABASE_URL": "postgresql://db/flags",
            "FLAG_SCHEDULE_MAX_RETRIES": "7",
            "FLAG_SCHEDULE_BATCH_SIZE": " 50 ",
            "FLAG_SCHEDULE_BACKOFF_JITTER_SECONDS": "0",
        }
    )
    assert settings.database_url == "postgresql://db/flags"
    assert (settings.max_retries, settings.batch_size, settings.backoff_jitter_seconds) == (
        7,
        50,
        0,
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        # above the range
        (
            "FLAG_SCHEDULE_MAX_RETRIES",
            "11",
            "FLAG_SCHEDULE_MAX_RETRIES must be an integer 0..10, got '11'",
        ),
        # not a number
        (
            "FLAG_SCHEDULE_MAX_RETRIES",
            "abc",
            "FLAG_SCHEDULE_MAX_RETRIES must be an integer 0..10, got 'abc'",
        ),
        # below the range
        (
            "FLAG_SCHEDULE_MAX_RETRIES",
            "-1",
            "FLAG_SCHEDULE_MAX_RETRIES must be an integer 0..10, got '-1'",
        ),
        # a float is not an integer
        (
            "FLAG_SCHEDULE_MAX_RETRIES",
            "2.5",
            "FLAG_SCHEDULE_MAX_RETRIES must be an integer 0..10, got '2.5'",
        ),
        (
            "FLAG_SCHEDULE_BATCH_SIZE",
            "0",
            "FLAG_SCHEDULE_BATCH_SIZE must be an integer 1..10000, got '0'",
        ),
        (
            "FLAG_SCHEDULE_BACKOFF_BASE_SECONDS",
            "0",
            "FLAG_SCHEDULE_BACKOFF_BASE_SECONDS must be an integer 1..86400, got '0'",
        ),
        (
            "FLAG_SCHEDULE_BACKOFF_JITTER_SECONDS",
            "-5",
            "FLAG_SCHEDULE_BACKOFF_JITTER_SECONDS must be an integer 0..3600, got '-5'",
        ),
        (
            "FLAG_SCHEDULE_TIME_MARGIN_SECONDS",
            "1e3",
            "FLAG_SCHEDULE_TIME_MARGIN_SECONDS must be an integer 1..900, got '1e3'",
        ),
    ],
)
def test_a_bad_value_names_the_variable_the_value_and_the_range(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SchedulerSettings.from_env({variable: value})
    assert str(caught.value) == message


def test_cap_below_base_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"CAP_SECONDS must be >= .*BASE_SECONDS"):
        SchedulerSettings.from_env(
            {"FLAG_SCHEDULE_BACKOFF_BASE_SECONDS": "600", "FLAG_SCHEDULE_BACKOFF_CAP_SECONDS": "60"}
        )


def test_empty_values_mean_the_default() -> None:
    assert (
        SchedulerSettings.from_env({"FLAG_SCHEDULE_MAX_RETRIES": "", "DATABASE_URL": " "})
        == SchedulerSettings()
    )


@pytest.mark.parametrize("level", ["", "DEBUG", "info", "Warning", "ERROR", "CRITICAL", "WARN"])
def test_known_log_levels_pass(level: str) -> None:
    check_powertools_environment({"POWERTOOLS_LOG_LEVEL": level})


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        # the older name, read when POWERTOOLS_LOG_LEVEL is unset or empty
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL must be one of DEBUG"),
        ({"POWERTOOLS_LOG_LEVEL": "", "LOG_LEVEL": "x"}, "LOG_LEVEL must be one of"),
        # Powertools reads these switches with strtobool, which refuses anything else (even "")
        ({"POWERTOOLS_METRICS_DISABLED": "maybe"}, "POWERTOOLS_METRICS_DISABLED must be true"),
        ({"POWERTOOLS_METRICS_DISABLED": ""}, "got ''"),
        ({"POWERTOOLS_DEV": "2"}, "POWERTOOLS_DEV must be true or false"),
        ({"POWERTOOLS_LOGGER_LOG_EVENT": "x"}, "POWERTOOLS_LOGGER_LOG_EVENT must be"),
        ({"POWERTOOLS_LOGGER_SAMPLE_RATE": "abc"}, "must be a number 0..1, got 'abc'"),
        ({"POWERTOOLS_LOGGER_SAMPLE_RATE": "1.5"}, "must be a number 0..1"),
    ],
)
def test_other_powertools_variables_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        check_powertools_environment(environ)


def test_readable_powertools_values_pass() -> None:
    check_powertools_environment(
        {
            "POWERTOOLS_LOG_LEVEL": "info",
            "LOG_LEVEL": "ignored-when-the-new-name-is-set",
            "POWERTOOLS_METRICS_DISABLED": "TRUE",
            "POWERTOOLS_DEV": "0",
            "POWERTOOLS_LOGGER_SAMPLE_RATE": "0.1",
        }
    )


@pytest.mark.parametrize("level", ["BOGUS", " INFO", "verbose", "10"])
def test_an_unknown_log_level_is_named(level: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        check_powertools_environment({"POWERTOOLS_LOG_LEVEL": level})
    assert str(refused.value) == (
        "POWERTOOLS_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (any case),"
        f" got {level!r}"
    )


@pytest.mark.parametrize("module", ["flag_scheduler.aws.scheduler", "flag_scheduler.aws.migration"])
def test_a_function_with_a_bad_log_level_fails_at_start_naming_it(module: str) -> None:
    """What Lambda shows as the init error: our line, not Powertools' bare ValueError."""
    env = {**os.environ, "POWERTOOLS_LOG_LEVEL": "BOGUS"}
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "flag_scheduler.errors.ConfigurationError: POWERTOOLS_LOG_LEVEL must be one of DEBUG,"
        " INFO, WARNING, ERROR, CRITICAL (any case), got 'BOGUS'"
    )
