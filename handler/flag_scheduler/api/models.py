"""The API's request and response bodies (snake_case, as the contract tables name them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from flag_scheduler.store.catalog import StatusReport


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class StatusOut(_Out):
    """The scheduler's health at `now` (as `flag-scheduler status --json`, without the
    database's location)."""

    now: datetime
    due_now: int
    oldest_due_at: datetime | None
    oldest_lag_seconds: float | None
    waiting_for_retry: int
    next_retry_at: datetime | None
    scheduled_later: int
    failed_last_24h: int
    last_run_started_at: datetime | None
    last_run_finished_at: datetime | None
    last_run_request_id: str | None
    last_run_summary: dict[str, Any] | None

    @classmethod
    def from_report(cls, report: StatusReport) -> StatusOut:
        return cls(
            now=report.now,
            due_now=report.due_now,
            oldest_due_at=report.oldest_due_at,
            oldest_lag_seconds=report.oldest_lag_seconds,
            waiting_for_retry=report.waiting_for_retry,
            next_retry_at=report.next_retry_at,
            scheduled_later=report.scheduled_later,
            failed_last_24h=report.failed_last_24h,
            last_run_started_at=report.last_run_started_at,
            last_run_finished_at=report.last_run_finished_at,
            last_run_request_id=report.last_run_request_id,
            last_run_summary=report.last_run_summary,
        )
