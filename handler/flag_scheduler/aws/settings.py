"""Settings of each process kind, read from the environment once per container.

Each variable, its default and its rule are written once, as a field of a model below; the
README's configuration table and the template's parameters are tested against these fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo

from flag_scheduler.engine.backoff import BackoffPolicy
from flag_scheduler.engine.limits import MAX_RETRY_COUNT
from flag_scheduler.engine.policy import RunPolicy
from flag_scheduler.errors import ConfigurationError


@dataclass(frozen=True)
class Pattern:
    """A text setting's rule: the whole value matches `regex`; `what` names it in errors."""

    regex: str
    what: str


def _integer(variable: str, default: int, low: int, high: int) -> Any:
    """A field read from `variable`: a decimal integer low..high, `default` when unset."""
    return Field(default, validation_alias=variable, ge=low, le=high)


def _text(variable: str, **kwargs: Any) -> Any:
    """A field read from `variable`: text (surrounding blanks dropped), None when unset."""
    return Field(None, validation_alias=variable, **kwargs)


def int_in_range(name: str, raw: str, *, low: int, high: int) -> int:
    """`raw` as a decimal integer within low..high (surrounding blanks allowed): the one
    integer rule of settings and of the CLI's options.

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


def integer_range(field: FieldInfo) -> tuple[int, int] | None:
    """The inclusive range of an integer setting, None for any other field."""
    # Field(ge=, le=) keeps its bounds as metadata objects with a `ge` or an `le`.
    low = next((m.ge for m in field.metadata if hasattr(m, "ge")), None)
    high = next((m.le for m in field.metadata if hasattr(m, "le")), None)
    if not isinstance(low, int) or not isinstance(high, int):
        return None
    return low, high


@dataclass(frozen=True)
class Variable:
    """One environment variable a process reads, as the README and the template show it."""

    name: str
    field: str
    default: Any
    range: tuple[int, int] | None


class EnvironmentSettings(BaseModel):
    """A process's settings: fields read from the variables their aliases name; an unset or
    blank variable leaves its field at the default. Subclass per process kind."""

    # defer_build: the validator is built on first use, not at import (cold start).
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        defer_build=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    @classmethod
    def variables(cls) -> list[Variable]:
        """Every variable this process reads, in field order."""
        return [
            Variable(str(field.validation_alias), name, field.default, integer_range(field))
            for name, field in cls.model_fields.items()
        ]

    @classmethod
    def bounds(cls, variable: str) -> tuple[int, int]:
        """The range of an integer variable (so a CLI option can allow the same).

        Raises:
            KeyError: this process reads no integer `variable`.
        """
        ranges = {v.name: v.range for v in cls.variables() if v.range is not None}
        return ranges[variable]

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Self:
        """Settings from environment variables; unset or blank ones take their defaults.

        Raises:
            ConfigurationError: naming the variable, the value given and the rule.
        """
        names = (variable.name for variable in cls.variables())
        return cls.model_validate({name: environ[name] for name in names if _is_set(environ, name)})

    @field_validator("*", mode="before")
    @classmethod
    def _check(cls, value: Any, info: ValidationInfo) -> Any:
        # ConfigurationError is no ValueError: pydantic lets it through as it is, one line.
        field = cls.model_fields[str(info.field_name)]
        variable = str(field.validation_alias)
        bounds = integer_range(field)
        if bounds is not None:
            raw = value if isinstance(value, str) else str(value)
            return int_in_range(variable, raw, low=bounds[0], high=bounds[1])
        if isinstance(value, str):
            value = value.strip()
            for pattern in (m for m in field.metadata if isinstance(m, Pattern)):
                if not re.fullmatch(pattern.regex, value):
                    raise ConfigurationError(f"{variable} must be {pattern.what}, got {value!r}")
        return value


def _is_set(environ: Mapping[str, str], name: str) -> bool:
    return bool(environ.get(name, "").strip())


_SECRET_ARN = Pattern(
    r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:.+",
    "a Secrets Manager secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)",
)
_TOPIC_ARN = Pattern(
    r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?",
    "an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)",
)
# PutEvents takes a bus name or ARN (a bus in another account is named by its ARN).
_BUS = Pattern(r"[A-Za-z0-9/._:-]{1,1600}", "an EventBridge bus name or ARN")
_HOST = Pattern(r"[A-Za-z0-9.:/_-]{1,255}", "a host name or address")


class DatabaseSettings(EnvironmentSettings):
    """Where the database is: DATABASE_URL, or an RDS-format secret in AWS. Every process
    that connects (the scheduler, the migration function) reads these."""

    # Kept out of repr: it may hold a password, and settings end up in logs and tracebacks.
    database_url: str | None = _text("DATABASE_URL", repr=False)
    db_secret_arn: Annotated[str | None, _SECRET_ARN] = _text("DB_SECRET_ARN")
    db_host: Annotated[str | None, _HOST] = _text("DB_HOST")
    db_name: str | None = _text("DB_NAME")
    # The secret is read only to open a connection; a rotated password is picked up when
    # this runs out, or at once when a connection with the cached one is refused.
    db_secret_max_age_seconds: int = _integer("DB_SECRET_MAX_AGE_SECONDS", 300, 1, 86_400)

    @model_validator(mode="after")
    def _overrides_need_the_secret(self) -> DatabaseSettings:
        for field in ("db_host", "db_name"):
            if getattr(self, field) is not None and self.db_secret_arn is None:
                variable, secret = self.alias(field), self.alias("db_secret_arn")
                raise ConfigurationError(
                    f"{variable} only applies with {secret}; set {secret} too"
                    " or put everything in DATABASE_URL"
                )
        return self

    @classmethod
    def alias(cls, field: str) -> str:
        """The environment variable of `field`."""
        return str(cls.model_fields[field].validation_alias)


class SchedulerSettings(DatabaseSettings):
    """The scheduler function (and the CLI's local runs and previews)."""

    max_retries: int = _integer("FLAG_SCHEDULE_MAX_RETRIES", 3, 0, MAX_RETRY_COUNT)
    batch_size: int = _integer("FLAG_SCHEDULE_BATCH_SIZE", 1000, 1, 10_000)
    # Stop starting work when the invocation has less than this left before its timeout.
    time_margin_seconds: int = _integer("FLAG_SCHEDULE_TIME_MARGIN_SECONDS", 10, 1, 900)
    backoff_base_seconds: int = _integer("FLAG_SCHEDULE_BACKOFF_BASE_SECONDS", 120, 1, 86_400)
    backoff_cap_seconds: int = _integer("FLAG_SCHEDULE_BACKOFF_CAP_SECONDS", 3600, 1, 604_800)
    backoff_jitter_seconds: int = _integer("FLAG_SCHEDULE_BACKOFF_JITTER_SECONDS", 30, 0, 3_600)
    lock_timeout_ms: int = _integer("FLAG_SCHEDULE_LOCK_TIMEOUT_MS", 5_000, 1, 600_000)
    statement_timeout_ms: int = _integer("FLAG_SCHEDULE_STATEMENT_TIMEOUT_MS", 30_000, 1, 900_000)
    # A change not applied this long after it was due fails as `expired`; 0 turns this off.
    max_lateness_seconds: int = _integer(
        "FLAG_SCHEDULE_MAX_LATENESS_SECONDS", 86_400, 0, 31_536_000
    )
    # This many consecutive retryable failures of one class on different flags stop the run
    # (an outage, not bad schedules); 0 turns this off.
    outage_threshold: int = _integer("FLAG_SCHEDULE_OUTAGE_THRESHOLD", 5, 0, 1_000)
    # Bounds what a frozen or killed invocation can hold locked.
    idle_in_transaction_timeout_ms: int = _integer(
        "FLAG_SCHEDULE_IDLE_IN_TRANSACTION_TIMEOUT_MS", 60_000, 1, 3_600_000
    )
    # A warm container reconnects (reading the secret again) once its connection is this
    # old, so a rotated password or a revoked login takes effect; 0: every invocation.
    connection_max_age_seconds: int = _integer(
        "FLAG_SCHEDULE_CONNECTION_MAX_AGE_SECONDS", 900, 0, 86_400
    )
    alert_topic_arn: Annotated[str | None, _TOPIC_ARN] = _text("ALERT_TOPIC_ARN")
    flag_events_bus_name: Annotated[str | None, _BUS] = _text("FLAG_EVENTS_BUS_NAME")

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> SchedulerSettings:
        if self.backoff_cap_seconds < self.backoff_base_seconds:
            raise ConfigurationError(
                f"{self.alias('backoff_cap_seconds')} must be >="
                f" {self.alias('backoff_base_seconds')}, got cap {self.backoff_cap_seconds}"
                f" < base {self.backoff_base_seconds}"
            )
        return self

    @property
    def backoff(self) -> BackoffPolicy:
        return BackoffPolicy(
            base_seconds=self.backoff_base_seconds,
            cap_seconds=self.backoff_cap_seconds,
            jitter_seconds=self.backoff_jitter_seconds,
        )

    def run_policy(self) -> RunPolicy:
        """The engine's plain record of these settings (the engine imports no settings)."""
        return RunPolicy(
            max_retries=self.max_retries,
            batch_size=self.batch_size,
            time_margin_ms=self.time_margin_seconds * 1000,
            backoff=self.backoff,
            lock_timeout_ms=self.lock_timeout_ms,
            statement_timeout_ms=self.statement_timeout_ms,
            max_lateness_seconds=self.max_lateness_seconds,
            outage_threshold=self.outage_threshold,
            idle_in_transaction_timeout_ms=self.idle_in_transaction_timeout_ms,
        )


class MigrationSettings(DatabaseSettings):
    """The migration function: only where the database is."""


def _word(variable: str, default: str) -> Any:
    """A field read from `variable`: text (surrounding blanks dropped), `default` when unset."""
    return Field(default, validation_alias=variable)


# What an OAuth scope may be (RFC 6749: printable ASCII but space, '"' and '\\').
_SCOPE = Pattern(r"[!#-\[\]-~]+", "a scope (printable ASCII, no spaces, quotes or backslashes)")
_CLAIM = Pattern(r"[A-Za-z0-9_:.-]+", "a claim name")
_CLAIMS = Pattern(r"[A-Za-z0-9_:.-]+( *, *[A-Za-z0-9_:.-]+)*", "claim names, comma-separated")


class ApiSettings(SchedulerSettings):
    """The HTTP API function: the scheduler's knobs (its retry previews and lateness checks
    must be the ones the scheduler applies), the scopes and claims it checks, and how long an
    idempotency key is remembered."""

    read_scope: Annotated[str, _SCOPE] = _word("FLAG_SCHEDULER_API_READ_SCOPE", "flags:read")
    write_scope: Annotated[str, _SCOPE] = _word("FLAG_SCHEDULER_API_WRITE_SCOPE", "flags:write")
    scope_claim: Annotated[str, _CLAIM] = _word("FLAG_SCHEDULER_API_SCOPE_CLAIM", "scope")
    actor_claims: Annotated[str, _CLAIMS] = _word("FLAG_SCHEDULER_API_ACTOR_CLAIMS", "email,sub")
    # A replay of a create this much later makes a new schedule; older keys are deleted.
    idempotency_retention_seconds: int = _integer(
        "FLAG_SCHEDULER_API_IDEMPOTENCY_RETENTION_SECONDS", 86_400, 60, 2_592_000
    )

    @property
    def actor_claim_names(self) -> tuple[str, ...]:
        """The claims naming the caller, first present wins."""
        return tuple(name.strip() for name in self.actor_claims.split(","))


# Every process kind's settings; the README and template tests read the variables from these.
PROCESS_SETTINGS: tuple[type[EnvironmentSettings], ...] = (
    SchedulerSettings,
    MigrationSettings,
    ApiSettings,
)


# Powertools reads these when a handler is imported (the metrics switch: when a run's metrics
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
