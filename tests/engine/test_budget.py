"""The statement budget the run loop and outbox delivery both give their transactions."""

from __future__ import annotations

import pytest

from flag_scheduler.engine.budget import statement_budget_ms


@pytest.mark.parametrize(
    ("configured", "window", "expected"),
    [
        (30_000, 590_000, 30_000),  # plenty of time: the configured timeout
        (30_000, 15_000, 15_000),  # 15 s before the margin: 15 s
        (30_000, 500, 1_000),  # almost into the margin: the 1 s floor
        (30_000, -4_000, 1_000),  # inside the margin (delivery's backlog count): the floor
        (500, 500, 500),  # a configured timeout below the floor stays as configured
    ],
)
def test_statement_budget_never_reaches_into_the_margin(
    configured: int, window: int, expected: int
) -> None:
    assert statement_budget_ms(configured, window_ms=window) == expected
