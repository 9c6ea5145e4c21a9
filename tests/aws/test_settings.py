"""AWS-only settings: optional values, and a clear error naming the variable when invalid."""

from __future__ import annotations

import pytest

from flag_scheduler.aws.settings import SchedulerSettings
from flag_scheduler.errors import ConfigurationError

SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:flag-scheduler/db-AbCdEf"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:flag-scheduler-alerts"


def test_nothing_set_means_nothing_configured() -> None:
    settings = SchedulerSettings.from_env({})
    assert settings == SchedulerSettings()
    assert settings.db_secret_max_age_seconds == 300


def test_every_variable_is_read() -> None:
    settings = SchedulerSettings.from_env(
        {
            "DB_SECRET_ARN": SECRET,
            "DB_HOST": "proxy.proxy-abc.eu-west-1.rds.amazonaws.com",
            "DB_NAME": "flags",
            "DB_SECRET_MAX_AGE_SECONDS": "60",
            "ALERT_TOPIC_ARN": TOPIC,
            "FLAG_EVENTS_BUS_NAME": "flag-events",
        }
    )
    assert settings == SchedulerSettings(
        db_secret_arn=SECRET,
        db_host="proxy.proxy-abc.eu-west-1.rds.amazonaws.com",
        db_name="flags",
        db_secret_max_age_seconds=60,
        alert_topic_arn=TOPIC,
        flag_events_bus_name="flag-events",
    )


def test_blank_values_count_as_unset() -> None:
    assert SchedulerSettings.from_env({"ALERT_TOPIC_ARN": "  ", "FLAG_EVENTS_BUS_NAME": ""}) == (
        SchedulerSettings()
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        # a secret name, not its ARN
        ({"DB_SECRET_ARN": "flag-scheduler/db"}, "DB_SECRET_ARN must be a Secrets Manager"),
        # an override without the secret it overrides
        ({"DB_HOST": "db.example.com"}, "DB_HOST only applies with DB_SECRET_ARN"),
        ({"DB_NAME": "flags"}, "DB_NAME only applies with DB_SECRET_ARN"),
        # a host with a space in it
        ({"DB_SECRET_ARN": SECRET, "DB_HOST": "db example"}, "DB_HOST must be a host name"),
        # a queue ARN where a topic ARN belongs
        (
            {"ALERT_TOPIC_ARN": "arn:aws:sqs:eu-west-1:123456789012:q"},
            "ALERT_TOPIC_ARN must be an SNS topic ARN",
        ),
        ({"FLAG_EVENTS_BUS_NAME": "bus with spaces"}, "FLAG_EVENTS_BUS_NAME must be an"),
        # out of range, and not a number
        ({"DB_SECRET_MAX_AGE_SECONDS": "0"}, "DB_SECRET_MAX_AGE_SECONDS must be an integer 1..8"),
        ({"DB_SECRET_MAX_AGE_SECONDS": "5m"}, "got '5m'"),
    ],
)
def test_invalid_values_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SchedulerSettings.from_env(environ)
