"""Retry delays: capped exponential backoff with deterministic jitter (pure arithmetic)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

# 2**62 seconds already exceeds any cap a timedelta can hold; past it the cap always wins.
_MAX_EXPONENT = 62


@dataclass(frozen=True)
class BackoffPolicy:
    """How long to wait before each retry, in seconds."""

    base_seconds: float = 120.0
    cap_seconds: float = 3600.0
    jitter_seconds: float = 30.0


def jitter_fraction(key: UUID | str, retry_number: int) -> float:
    """A number in [0, 1) that is fixed for (key, retry) and uniform across keys (a schedule's
    id, an outbox message's id)."""
    # A hash instead of random(): the same schedule always gets the same retry times, so a
    # preview is exact and tests are deterministic, while different schedules still spread
    # out and do not retry in lock-step after a shared outage.
    digest = hashlib.blake2b(f"{key}:{retry_number}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def retry_delay(policy: BackoffPolicy, retry_number: int, key: UUID | str) -> timedelta:
    """Delay before retry `retry_number` (0 for the first retry) of what `key` names.

    Raises:
        ValueError: if `retry_number` is negative.
    """
    if retry_number < 0:
        raise ValueError(f"retry_number must be >= 0, got {retry_number}")
    exponent = min(retry_number, _MAX_EXPONENT)
    backoff = min(policy.cap_seconds, policy.base_seconds * 2**exponent)
    jitter = policy.jitter_seconds * jitter_fraction(key, retry_number)
    return timedelta(seconds=backoff + jitter)


@dataclass(frozen=True)
class PlannedAttempt:
    """One attempt in a schedule's retry timeline."""

    attempt: int
    at: datetime
    delay_before: timedelta | None


def retry_timeline(
    policy: BackoffPolicy,
    schedule_id: UUID,
    first_attempt_at: datetime,
    max_retries: int,
    *,
    attempts_made: int = 0,
    until: datetime | None = None,
) -> list[PlannedAttempt]:
    """The attempts a schedule has left if each one failed the moment it started.

    `first_attempt_at` is when attempt `attempts_made + 1` happens (the scheduled time for a
    new schedule, `next_retry_at` for one waiting for a retry). The last entry is the attempt
    whose failure makes the schedule permanently failed, unless attempts at or after `until`
    are cut off (the end of representable time).
    """
    attempts = [PlannedAttempt(attempt=attempts_made + 1, at=first_attempt_at, delay_before=None)]
    for retry_number in range(attempts_made, max_retries):
        delay = retry_delay(policy, retry_number, schedule_id)
        if until is not None and until - attempts[-1].at <= delay:
            break
        attempts.append(
            PlannedAttempt(attempt=retry_number + 2, at=attempts[-1].at + delay, delay_before=delay)
        )
    return attempts
