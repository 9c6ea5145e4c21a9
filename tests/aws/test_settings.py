"""AWS-only settings: optional values, and a clear error naming the variable when invalid."""

from __future__ import annotations

import pytest

from flag_scheduler.aws.settings import (
    PROCESS_SETTINGS,
    DatabaseSettings,
    MigrationSettings,
    SchedulerSettings,
)
from flag_scheduler.engine.run_loop import RunPolicy
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


def test_the_migration_function_reads_only_where_the_database_is() -> None:
    """Each process kind validates only its own variables: a scheduler setting the migration
    function never reads cannot stop a migration."""
    settings = MigrationSettings.from_env(
        {
            "DATABASE_URL": " postgresql://db/flags ",
            "FLAG_SCHEDULE_MAX_RETRIES": "abc",
            "ALERT_TOPIC_ARN": "not an arn",
        }
    )
    assert settings.database_url == "postgresql://db/flags"
    assert {v.name for v in MigrationSettings.variables()} == {
        v.name for v in DatabaseSettings.variables()
    }


def test_every_process_reads_the_database_variables_the_same_way() -> None:
    database = DatabaseSettings.variables()
    for model in PROCESS_SETTINGS:
        assert model.variables()[: len(database)] == database, model.__name__


def test_an_integer_setting_given_in_code_obeys_the_same_rule() -> None:
    with pytest.raises(ConfigurationError, match=r"^FLAG_SCHEDULE_BATCH_SIZE must be an integer"):
        SchedulerSettings(batch_size=0)


def test_the_engine_gets_a_plain_policy_with_the_settings_values() -> None:
    policy = SchedulerSettings.from_env(
        {"FLAG_SCHEDULE_TIME_MARGIN_SECONDS": "20", "FLAG_SCHEDULE_BACKOFF_JITTER_SECONDS": "0"}
    ).run_policy()
    assert (policy.time_margin_ms, policy.backoff.jitter_seconds) == (20_000, 0)
    # RunPolicy keeps defaults of its own (engine/run_loop.py, for tests that build partial
    # policies): they may not drift from the settings'.
    assert SchedulerSettings().run_policy() == RunPolicy()
