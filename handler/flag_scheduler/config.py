"""Settings read from the environment once per container, validated with clear errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flag_scheduler.engine.backoff import BackoffPolicy
from flag_scheduler.errors import ConfigurationError


@dataclass(frozen=True)
class _IntVariable:
    """An integer environment variable, its field on Settings and its inclusive range."""

    env: str
    field: str
    low: int
    high: int


# Each environment variable name is written here and nowhere else.
DATABASE_URL = "DATABASE_URL"
_INT_VARIABLES = (
    _IntVariable("FLAG_SCHEDULE_MAX_RETRIES", "max_retries", 0, 10),
    _IntVariable("FLAG_SCHEDULE_BATCH_SIZE", "batch_size", 1, 10_000),
    _IntVariable("FLAG_SCHEDULE_TIME_MARGIN_SECONDS", "time_margin_seconds", 1, 900),
    _IntVariable("FLAG_SCHEDULE_BACKOFF_BASE_SECONDS", "backoff_base_seconds", 1, 86_400),
    _IntVariable("FLAG_SCHEDULE_BACKOFF_CAP_SECONDS", "backoff_cap_seconds", 1, 604_800),
    _IntVariable("FLAG_SCHEDULE_BACKOFF_JITTER_SECONDS", "backoff_jitter_seconds", 0, 3_600),
    _IntVariable("FLAG_SCHEDULE_LOCK_TIMEOUT_MS", "lock_timeout_ms", 1, 600_000),
    _IntVariable("FLAG_SCHEDULE_STATEMENT_TIMEOUT_MS", "statement_timeout_ms", 1, 900_000),
    _IntVariable("FLAG_SCHEDULE_MAX_LATENESS_SECONDS", "max_lateness_seconds", 0, 31_536_000),
    _IntVariable("FLAG_SCHEDULE_OUTAGE_THRESHOLD", "outage_threshold", 0, 1_000),
    _IntVariable(
        "FLAG_SCHEDULE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        "idle_in_transaction_timeout_ms",
        1,
        3_600_000,
    ),
    _IntVariable(
        "FLAG_SCHEDULE_CONNECTION_MAX_AGE_SECONDS", "connection_max_age_seconds", 0, 86_400
    ),
)

RetryLimit = Annotated[int, Field(ge=0, le=10)]


class Settings(BaseModel):
    """Everything the scheduler can be configured with."""

    # defer_build: the validator is built on first use, not at import (cold start).
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, defer_build=True)

    # Kept out of repr: it may hold a password, and settings end up in logs and tracebacks.
    database_url: str | None = Field(default=None, repr=False)
    max_retries: RetryLimit = 3
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 1000
    # Stop starting work when the invocation has less than this left before its timeout.
    time_margin_seconds: Annotated[int, Field(ge=1, le=900)] = 10
    backoff_base_seconds: Annotated[int, Field(ge=1, le=86_400)] = 120
    backoff_cap_seconds: Annotated[int, Field(ge=1, le=604_800)] = 3600
    backoff_jitter_seconds: Annotated[int, Field(ge=0, le=3_600)] = 30
    lock_timeout_ms: Annotated[int, Field(ge=1, le=600_000)] = 5_000
    statement_timeout_ms: Annotated[int, Field(ge=1, le=900_000)] = 30_000
    # A change not applied this long after it was due fails as `expired`; 0 turns this off.
    max_lateness_seconds: Annotated[int, Field(ge=0, le=31_536_000)] = 86_400
    # This many consecutive retryable failures of one class on different flags stop the run
    # (an outage, not bad schedules); 0 turns this off.
    outage_threshold: Annotated[int, Field(ge=0, le=1_000)] = 5
    # Bounds what a frozen or killed invocation can hold locked.
    idle_in_transaction_timeout_ms: Annotated[int, Field(ge=1, le=3_600_000)] = 60_000
    # A warm container reconnects (reading the secret again) once its connection is this
    # old, so a rotated password or a revoked login takes effect; 0: every invocation.
    connection_max_age_seconds: Annotated[int, Field(ge=0, le=86_400)] = 900

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> Settings:
        if self.backoff_cap_seconds < self.backoff_base_seconds:
            raise ValueError(
                "FLAG_SCHEDULE_BACKOFF_CAP_SECONDS must be >= FLAG_SCHEDULE_BACKOFF_BASE_SECONDS,"
                f" got cap {self.backoff_cap_seconds} < base {self.backoff_base_seconds}"
            )
        return self

    @property
    def backoff(self) -> BackoffPolicy:
        return BackoffPolicy(
            base_seconds=self.backoff_base_seconds,
            cap_seconds=self.backoff_cap_seconds,
            jitter_seconds=self.backoff_jitter_seconds,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from environment variables; unset ones take their defaults.

        Raises:
            ConfigurationError: naming the variable, the value and the allowed range.
        """
        values: dict[str, Any] = {}
        url = environ.get(DATABASE_URL, "").strip()
        if url:
            values["database_url"] = url
        for variable in _INT_VARIABLES:
            raw = environ.get(variable.env)
            if raw is None or raw.strip() == "":
                continue
            values[variable.field] = _parse_int(variable, raw)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigurationError(_first_message(exc)) from None


def int_in_range(name: str, raw: str, *, low: int, high: int) -> int:
    """`raw` as a decimal integer within low..high (surrounding blanks allowed).

    Raises:
        ConfigurationError: naming `name`, the range and the value given.
    """
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ConfigurationError(f"{name} must be an integer {low}..{high}, got {raw!r}")
    return value


def _parse_int(variable: _IntVariable, raw: str) -> int:
    return int_in_range(variable.env, raw, low=variable.low, high=variable.high)


def _first_message(exc: ValidationError) -> str:
    error = exc.errors()[0]
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


# Powertools reads these when the handler is imported (the metrics switch: when a run's metrics
# are flushed, after its work is committed) and raises a bare ValueError on a value it cannot
# read. Checked first, so the error names the variable and what it may be.
POWERTOOLS_LOG_LEVEL = "POWERTOOLS_LOG_LEVEL"
LOG_LEVEL = "LOG_LEVEL"  # Powertools' older name, read when POWERTOOLS_LOG_LEVEL is unset
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Also understood by the logging module (WARN, FATAL: aliases; NOTSET: everything).
_LOG_LEVEL_ALIASES = ("WARN", "FATAL", "NOTSET")
POWERTOOLS_SWITCHES = (
    "POWERTOOLS_METRICS_DISABLED",
    "POWERTOOLS_DEV",
    "POWERTOOLS_DEBUG",
    "POWERTOOLS_LOGGER_LOG_EVENT",
    "POWERTOOLS_LOG_DEDUPLICATION_DISABLED",
)
_TRUE, _FALSE = ("1", "y", "yes", "t", "true", "on"), ("0", "n", "no", "f", "false", "off")
POWERTOOLS_LOGGER_SAMPLE_RATE = "POWERTOOLS_LOGGER_SAMPLE_RATE"


def check_powertools_environment(environ: Mapping[str, str]) -> None:
    """Raises ConfigurationError naming a Powertools variable set to a value it cannot read."""
    variable = POWERTOOLS_LOG_LEVEL if environ.get(POWERTOOLS_LOG_LEVEL) else LOG_LEVEL
    level = environ.get(variable)
    if level and level.upper() not in LOG_LEVELS + _LOG_LEVEL_ALIASES:
        raise ConfigurationError(
            f"{variable} must be one of {', '.join(LOG_LEVELS)} (any case), got {level!r}"
        )
    for switch in POWERTOOLS_SWITCHES:
        value = environ.get(switch)
        if value is not None and value.lower() not in _TRUE + _FALSE:
            raise ConfigurationError(
                f"{switch} must be true or false (also 1/0, yes/no, on/off), got {value!r}"
            )
    rate = environ.get(POWERTOOLS_LOGGER_SAMPLE_RATE)
    if rate:
        try:
            valid = 0.0 <= float(rate) <= 1.0
        except ValueError:
            valid = False
        if not valid:
            raise ConfigurationError(
                f"{POWERTOOLS_LOGGER_SAMPLE_RATE} must be a number 0..1, got {rate!r}"
            )
