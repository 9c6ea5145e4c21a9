"""How long one statement may run: the configured timeout, cut to the invocation's time left."""

from __future__ import annotations

# The shortest statement timeout a transaction is given, however little time is left. It stays
# within the smallest time margin (1 s), so even a floored statement ends before the
# invocation's timeout; less would cancel statements on mere latency.
MIN_STATEMENT_TIMEOUT_MS = 1_000


def statement_budget_ms(statement_timeout_ms: int, *, window_ms: int) -> int:
    """The statement timeout for a transaction started `window_ms` before the time margin
    begins (negative once inside it): `statement_timeout_ms`, cut to the window, never below
    MIN_STATEMENT_TIMEOUT_MS unless configured lower."""
    return min(statement_timeout_ms, max(MIN_STATEMENT_TIMEOUT_MS, window_ms))
