"""Settings that only exist in AWS: the database secret, the alert topic and the event bus."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from flag_scheduler.config import int_in_range
from flag_scheduler.errors import ConfigurationError

# Each environment variable name is written here and nowhere else.
DB_SECRET_ARN = "DB_SECRET_ARN"  # noqa: S105 (a variable name, not a secret)
DB_HOST = "DB_HOST"
DB_NAME = "DB_NAME"
DB_SECRET_MAX_AGE_SECONDS = "DB_SECRET_MAX_AGE_SECONDS"  # noqa: S105
ALERT_TOPIC_ARN = "ALERT_TOPIC_ARN"
FLAG_EVENTS_BUS_NAME = "FLAG_EVENTS_BUS_NAME"

_SECRET_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:.+")
_TOPIC_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?")
# PutEvents takes a bus name or ARN (a bus in another account is named by its ARN).
_BUS = re.compile(r"[A-Za-z0-9/._:-]{1,1600}")
_HOST = re.compile(r"[A-Za-z0-9.:/_-]{1,255}")
_MAX_AGE_RANGE = (1, 86_400)


@dataclass(frozen=True)
class AwsSettings:
    """Where the AWS side effects go; every field is optional."""

    db_secret_arn: str | None = None
    db_host: str | None = None
    db_name: str | None = None
    # The secret is read only to open a connection; a rotated password is picked up when
    # this runs out, or at once when a connection with the cached one is refused.
    db_secret_max_age_seconds: int = 300
    alert_topic_arn: str | None = None
    flag_events_bus_name: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AwsSettings:
        """Read the AWS variables; unset or blank ones are None.

        Raises:
            ConfigurationError: naming the variable, the value and what it must look like.
        """
        secret = _optional(environ, DB_SECRET_ARN)
        if secret is not None and not _SECRET_ARN.fullmatch(secret):
            raise ConfigurationError(
                f"{DB_SECRET_ARN} must be a Secrets Manager secret ARN"
                f" (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME), got {secret!r}"
            )
        host = _optional(environ, DB_HOST)
        name = _optional(environ, DB_NAME)
        for variable, value in ((DB_HOST, host), (DB_NAME, name)):
            if value is not None and secret is None:
                raise ConfigurationError(
                    f"{variable} only applies with {DB_SECRET_ARN}; set {DB_SECRET_ARN} too"
                    " or put everything in DATABASE_URL"
                )
        if host is not None and not _HOST.fullmatch(host):
            raise ConfigurationError(f"{DB_HOST} must be a host name or address, got {host!r}")
        topic = _optional(environ, ALERT_TOPIC_ARN)
        if topic is not None and not _TOPIC_ARN.fullmatch(topic):
            raise ConfigurationError(
                f"{ALERT_TOPIC_ARN} must be an SNS topic ARN"
                f" (arn:aws:sns:REGION:ACCOUNT:NAME), got {topic!r}"
            )
        bus = _optional(environ, FLAG_EVENTS_BUS_NAME)
        if bus is not None and not _BUS.fullmatch(bus):
            raise ConfigurationError(
                f"{FLAG_EVENTS_BUS_NAME} must be an EventBridge bus name or ARN, got {bus!r}"
            )
        return cls(
            db_secret_arn=secret,
            db_host=host,
            db_name=name,
            db_secret_max_age_seconds=_max_age(environ),
            alert_topic_arn=topic,
            flag_events_bus_name=bus,
        )


def _optional(environ: Mapping[str, str], variable: str) -> str | None:
    value = environ.get(variable, "").strip()
    return value or None


def _max_age(environ: Mapping[str, str]) -> int:
    raw = environ.get(DB_SECRET_MAX_AGE_SECONDS)
    if raw is None or not raw.strip():
        return AwsSettings.db_secret_max_age_seconds
    low, high = _MAX_AGE_RANGE
    return int_in_range(DB_SECRET_MAX_AGE_SECONDS, raw, low=low, high=high)
