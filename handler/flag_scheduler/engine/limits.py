"""What a flag key, an environment, a schedule time, a retry count and an error text may be,
written once for all callers.

The schema (migrations/schema.py, migration 0008), the CLI and the engine import these, so a
rule changes in one place (a new migration carries the new text to existing databases).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

# A flag key: a letter or digit, then letters, digits, `.`, `_`, `:` or `-`; 1..128 characters.
# No spaces, no slashes, no quotes: keys end up in URLs, metric dimensions, log lines and shells.
FLAG_KEY_PATTERN = "[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
FLAG_KEY_RULE = "1..128 characters: a letter or digit, then letters, digits, '.', '_', ':' or '-'"
# An environment: the same characters without `:`, 1..64 of them (production, eu-west.stage).
ENVIRONMENT_PATTERN = "[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
ENVIRONMENT_RULE = "1..64 characters: a letter or digit, then letters, digits, '.', '_' or '-'"

# The moments a schedule may hold: every client library can represent them (PostgreSQL also
# accepts ±infinity and years before 1 and beyond 9999, which Python cannot read back).
EARLIEST_TIME = datetime(1, 1, 2, tzinfo=UTC)
END_OF_TIME = datetime(9999, 12, 31, tzinfo=UTC)  # exclusive
TIME_RANGE_TEXT = "from 0001-01-02T00:00:00Z up to (not including) 9999-12-31T00:00:00Z"

# retry_count only grows while it is below max_retries (at most 10) and a requeue resets it,
# so no schedule the engine wrote ever holds more; the schema refuses more (0006).
MAX_RETRY_COUNT = 10
# last_error and a parking reason are for people (the history's error holds 2000): a driver
# message longer than this is noise.
MAX_ERROR_LENGTH = 1000


def regex_sql(pattern: str) -> str:
    """`pattern` anchored for PostgreSQL's `~` (ASCII-only classes read the same in both)."""
    return f"^{pattern}$"


def time_in_range_sql(column: str) -> str:
    """The CHECK expression keeping `column` inside [EARLIEST_TIME, END_OF_TIME)."""
    return f"{column} >= '{_sql_time(EARLIEST_TIME)}' AND {column} < '{_sql_time(END_OF_TIME)}'"


def _sql_time(moment: datetime) -> str:
    # Not strftime: its %Y does not pad year 1 to four digits on every platform.
    return moment.isoformat(sep=" ").replace("+00:00", "+00")


def flag_key_problem(key: str) -> str | None:
    """Why `key` is not a valid flag key, or None when it is."""
    return _problem("flag key", key, FLAG_KEY_PATTERN, FLAG_KEY_RULE)


def environment_problem(environment: str) -> str | None:
    """Why `environment` is not a valid environment name, or None when it is."""
    return _problem("environment", environment, ENVIRONMENT_PATTERN, ENVIRONMENT_RULE)


def _problem(what: str, value: str, pattern: str, rule: str) -> str | None:
    if re.fullmatch(pattern, value):
        return None
    shown = value if len(value) <= 40 else f"{value[:37]}..."
    return f"{what} must be {rule}; got {shown!r} ({len(value)} characters)"


def time_problem(moment: datetime) -> str | None:
    """Why a schedule cannot hold `moment`, or None when it can."""
    if EARLIEST_TIME <= moment < END_OF_TIME:
        return None
    return f"{moment.isoformat()} is outside the range a schedule can hold: {TIME_RANGE_TEXT}"
