"""Argument types the commands share: integers in a range, ids."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from uuid import UUID

from flag_scheduler.aws.settings import int_in_range
from flag_scheduler.errors import ConfigurationError


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An integer low..high, by the rule settings follow (a usage error otherwise)."""

    def parse(text: str) -> int:
        try:
            return int_in_range("the value", text, low=low, high=high)
        except ConfigurationError:
            raise argparse.ArgumentTypeError(
                f"must be an integer {low}..{high}, got {text!r}"
            ) from None

    return parse


def id_of(what: str) -> Callable[[str], UUID]:
    """The id of a `what` (schedule, ramp): a UUID, or a usage error naming what it is not."""

    def parse(text: str) -> UUID:
        try:
            return UUID(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {what} id (a UUID): {text!r}") from None

    return parse
