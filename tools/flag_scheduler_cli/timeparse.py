"""Reading the times an operator types: ISO 8601 with an offset, `now`, or `+15m`."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from flag_scheduler.engine.limits import TIME_RANGE_TEXT

_RELATIVE = re.compile(r"^\+(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_time(text: str, now: datetime, *, zone_option: str | None = None) -> datetime:
    """A timezone-aware moment from `text`, relative to `now` where it says so;
    `zone_option` is the option naming a zone instead, if the command has one.

    Raises:
        ValueError: the text is not a time, has no offset (we never guess a zone), or is
            relative and beyond the last representable time.
    """
    value = text.strip()
    if value.lower() == "now":
        return now
    relative = _RELATIVE.match(value)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        try:
            return now + timedelta(**{_UNITS[unit]: amount})
        except OverflowError:
            raise ValueError(
                f"{text!r} is later than any time a schedule can hold ({TIME_RANGE_TEXT})"
            ) from None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"expected an ISO 8601 time with offset (2026-12-24T09:00:00Z), 'now' or"
            f" '+15m' / '+2h' / '+1d', got {text!r}"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        zone = f", or name its zone with {zone_option}," if zone_option else ""
        raise ValueError(
            f"{text!r} has no time zone offset; add one (Z or +01:00){zone} instead of letting"
            " flag-scheduler guess"
        )
    return moment


_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
# A number after the last unit written reads as the next smaller unit: 1h30 -> 1h30m.
_UNIT_AFTER = {"d": "h", "h": "m", "m": "s"}


def parse_duration(text: str) -> int:
    """Whole seconds from `30m`, `1h30m`, `2d` or `90s`: every number has its unit.

    Raises:
        ValueError: the text is not such a duration; a bare number (is 90 seconds or
            minutes?) and a trailing number (1h30) say which units to write.
    """
    value = text.strip().lower()
    if value.isdigit():
        raise ValueError(f"{text!r} has no unit; write {value}s, {value}m, {value}h or {value}d")
    found = _DURATION.match(value)
    if not value or found is None:
        raise ValueError(
            f"expected a duration such as 30m, 1h30m, 2d or 90s, got {text!r}{_hint(value)}"
        )
    days, hours, minutes, seconds = (int(part or 0) for part in found.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _hint(value: str) -> str:
    """A suggestion when `value` is a duration whose last number lacks its unit."""
    stem = value.rstrip("0123456789")
    if stem != value and stem[-1:] in _UNIT_AFTER:
        suggested = value + _UNIT_AFTER[stem[-1]]
        if _DURATION.match(suggested):
            return f"; did you mean {suggested}?"
    return ""
