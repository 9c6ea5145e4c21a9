"""What one scheduler invocation asks of the database after its batches, and what the entry
takes explicitly: the transactions of delivery and the backlog counts, their time budget, and
the progress reporter."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

import pytest

from flag_scheduler.aws import scheduler
from flag_scheduler.engine.budget import MIN_STATEMENT_TIMEOUT_MS
from flag_scheduler.engine.notifier import SendReport
from flag_scheduler.engine.records import ClaimedMessage, RunSummary
from flag_scheduler.engine.states import MessageKind
from flag_scheduler.store.catalog import Catalog
from flag_scheduler.store.repository import ScheduleRepository
from flag_scheduler_cli.local import FakeLambdaContext
from tests.aws.conftest import due_now


class _CountingRepository(ScheduleRepository):
    """The real repository, recording the timeouts of each transaction it opens."""

    opened: ClassVar[list[dict[str, int]]] = []

    @contextmanager
    def transaction(self, **timeouts: int) -> Iterator[None]:
        _CountingRepository.opened.append(timeouts)
        with super().transaction(**timeouts):
            yield


class _Notifier:
    """A notifier of every kind that delivers whatever it is given (our own interface)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    @property
    def kinds(self) -> frozenset[MessageKind]:
        return frozenset(MessageKind)

    def send(self, messages: Sequence[ClaimedMessage], *, deadline: float) -> SendReport:
        self.sent += [m.message_id for m in messages]
        return SendReport(delivered=[m.id for m in messages])


class _StoppedContext(FakeLambdaContext):
    """A context whose remaining time stands still."""

    def __init__(self, remaining_ms: int) -> None:
        super().__init__()
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch, database_url: str) -> list[dict[str, int]]:
    """The transactions the handler opens, with a notifier of every kind in place."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setattr(scheduler, "ScheduleRepository", _CountingRepository)
    scheduler._container.notifier = _Notifier()
    _CountingRepository.opened = []
    return _CountingRepository.opened


def test_delivery_and_both_backlog_counts_take_two_transactions(
    counted: list[dict[str, int]],
) -> None:
    result = scheduler.run_invocation(FakeLambdaContext())

    assert (result["claimed"], result["retry_backlog"], result["outbox_backlog"]) == (0, 0, 0)
    # The run loop's claim that found nothing; tidying the outbox with its first claim;
    # both counts. (Before: discard, fold, claim, count the outbox, count the retries.)
    assert len(counted) == 3


def test_each_delivery_claim_after_the_first_is_one_transaction(
    counted: list[dict[str, int]], catalog: Catalog
) -> None:
    for i in range(3):
        due_now(catalog, f"flag-{i}", {"enabled": True})

    result = scheduler.run_invocation(FakeLambdaContext())

    assert (result["applied"], result["notifications_delivered"]) == (3, 3)
    assert result["outbox_backlog"] == 0
    # Batch, run loop's empty claim; tidy + claim (3 sent), the claim finding none; counts.
    assert len(counted) == 5


def test_the_backlog_count_is_bounded_by_the_time_left(counted: list[dict[str, int]]) -> None:
    """With 9 s left and a 10 s margin nothing is claimed or sent; the counts still run,
    but their statements get the floor, not the configured 30 s that would outlast the
    invocation."""
    result = scheduler.run_invocation(_StoppedContext(remaining_ms=9_000))

    assert result["delivery_stopped_for_time"] is True
    assert [each["statement_timeout_ms"] for each in counted] == [MIN_STATEMENT_TIMEOUT_MS]
    assert counted[0]["lock_timeout_ms"] <= MIN_STATEMENT_TIMEOUT_MS
    assert result["retry_backlog"] == 0


def test_delivery_claims_get_the_run_loops_statement_floor(
    counted: list[dict[str, int]],
) -> None:
    """10.5 s left with a 10 s margin: 0.5 s to the deadline, so the statement budget is the
    1 s floor the run loop uses too (delivery once had its own floor of 1 ms)."""
    scheduler.run_invocation(_StoppedContext(remaining_ms=10_500 + 150))

    run_loop_claim, delivery_claim = counted[0], counted[1]
    assert run_loop_claim["statement_timeout_ms"] == MIN_STATEMENT_TIMEOUT_MS
    assert delivery_claim["statement_timeout_ms"] == MIN_STATEMENT_TIMEOUT_MS


def test_progress_is_an_argument_of_the_handler(
    monkeypatch: pytest.MonkeyPatch, database_url: str, catalog: Catalog
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    due_now(catalog, "checkout", {"enabled": True})
    seen: list[int] = []

    def progress(summary: RunSummary) -> None:
        seen.append(summary.applied)

    scheduler.lambda_handler({}, FakeLambdaContext(), progress=progress)
    scheduler.lambda_handler({}, FakeLambdaContext())  # a later run without one

    assert seen == [1]
    assert not hasattr(scheduler, "progress_reporter")  # no module state to set or forget
