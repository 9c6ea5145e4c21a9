"""Counting and logging what a run decided (its notifications are in the outbox already)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from uuid import UUID

from flag_scheduler.engine.limits import MAX_ERROR_LENGTH
from flag_scheduler.engine.ramps import RampStep
from flag_scheduler.engine.records import DueSchedule, RunSummary, ScheduleOutcome
from flag_scheduler.engine.states import ErrorClass, Outcome, RampAction
from flag_scheduler.errors import ScheduleFailure

logger = logging.getLogger(__name__)


def committed(summary: RunSummary, outcomes: Sequence[ScheduleOutcome], now: datetime) -> None:
    """Count and log the outcomes of a committed batch that started at `now`."""
    for outcome in outcomes:
        _BY_OUTCOME.get(outcome.outcome, _failed)(summary, outcome, now)


def _applied(summary: RunSummary, outcome: ScheduleOutcome, now: datetime) -> None:
    schedule = outcome.schedule
    assert outcome.change is not None
    summary.applied += 1
    lag = now - schedule.scheduled_at
    summary.record_lag(lag.total_seconds())
    retried = schedule.retry_count > 0
    summary.retry_succeeded += retried
    if logger.isEnabledFor(logging.INFO):
        logger.info(
            "schedule_retry_succeeded" if retried else "schedule_applied",
            extra={
                **_log_fields(schedule),
                "lag_seconds": round(lag.total_seconds(), 3),
                "old": outcome.change.old,
                "new": outcome.change.new,
            },
        )


def _superseded(summary: RunSummary, outcome: ScheduleOutcome, now: datetime) -> None:
    summary.superseded += 1
    logger.info("schedule_superseded", extra=_log_fields(outcome.schedule))


def _retry_scheduled(summary: RunSummary, outcome: ScheduleOutcome, now: datetime) -> None:
    summary.retried += 1
    assert outcome.next_retry_at is not None
    logger.warning(
        "schedule_retry_scheduled",
        extra={
            **_log_fields(outcome.schedule),
            **_error_fields(outcome),
            "retry_count": outcome.retry_count,
            "next_retry_at": outcome.next_retry_at.isoformat(),
        },
    )


def _failed(summary: RunSummary, outcome: ScheduleOutcome, now: datetime) -> None:
    summary.failed_permanently += 1
    summary.expired += outcome.outcome == Outcome.EXPIRED
    logger.error(
        "schedule_failed_permanently",
        extra={**_log_fields(outcome.schedule), **_error_fields(outcome), "next_retry_at": None},
    )


_BY_OUTCOME: Mapping[Outcome, Callable[[RunSummary, ScheduleOutcome, datetime], None]] = {
    Outcome.APPLIED: _applied,
    Outcome.SUPERSEDED: _superseded,
    Outcome.RETRY_SCHEDULED: _retry_scheduled,
}


def ramp_steps(summary: RunSummary, steps: Sequence[RampStep]) -> None:
    """Count and log what committed outcomes did to their ramps."""
    for step in steps:
        fields: dict[str, object] = {
            "ramp_id": str(step.ramp.id),
            "stage": step.stage,
            "schedule_id": str(step.schedule_id),
        }
        if step.action == RampAction.HALTED:
            summary.ramps_halted += 1
            halt = step.halt
            logger.error(
                "ramp_halted",
                extra={
                    **fields,
                    "error_class": halt.error_class if halt else None,
                    "error": halt.error if halt else None,
                    "rolled_back": bool(step.schedules),
                },
            )
            continue
        summary.ramp_stages_applied += 1
        next_due = step.next_due_at
        logger.info(
            "ramp_stage_applied",
            extra={**fields, "next_stage_due_at": next_due.isoformat() if next_due else None},
        )
        if step.action == RampAction.COMPLETED:
            summary.ramps_completed += 1
            logger.info("ramp_completed", extra=fields)


def stages_waiting(schedules: Sequence[DueSchedule]) -> None:
    """Log ramp stages left due for a later run (guard alarms without data or unreadable, or
    a ramp an operator holds)."""
    for schedule in schedules:
        logger.warning(
            "ramp_stage_waiting",
            extra={**_log_fields(schedule), "ramp_id": str(schedule.ramp_id)},
        )


def alarms_unavailable(names: Sequence[str], reason: str) -> None:
    """Log that guard alarms could not be read (their stages wait)."""
    logger.warning(
        "guard_alarms_unavailable",
        extra={"alarm_names": list(names), "error": reason[:MAX_ERROR_LENGTH]},
    )


def ramps_unreadable(failure: ScheduleFailure) -> None:
    """Log that the batch's ramps could not be locked (their stages wait)."""
    logger.error(
        "ramps_unreadable",
        extra={"error_class": failure.error_class, "error": str(failure)[:MAX_ERROR_LENGTH]},
    )


def halt_alert_unqueued(failure: ScheduleFailure) -> None:
    """Log that a ramp halted by a parked stage could not have its alert queued (the halt
    stands; the log line and SchedulesUnrecordable still say it)."""
    logger.error(
        "ramp_halt_alert_unqueued",
        extra={"error_class": failure.error_class, "error": str(failure)[:MAX_ERROR_LENGTH]},
    )


def stages_unstamped(failure: ScheduleFailure) -> None:
    """Log that the next stages' holds could not be counted from the batch's commit."""
    logger.error(
        "ramp_stages_unstamped",
        extra={"error_class": failure.error_class, "error": str(failure)[:MAX_ERROR_LENGTH]},
    )


def unrecordable(
    schedules: Sequence[DueSchedule], reasons: Mapping[UUID, str], *, parked: bool
) -> None:
    """Log each schedule taken out of the queue (or, unless `parked`, only skipped)."""
    for schedule in schedules:
        logger.error(
            "schedule_unrecordable",
            extra={
                **_log_fields(schedule),
                "error_class": ErrorClass.UNRECORDABLE,
                "error": reasons[schedule.id][:MAX_ERROR_LENGTH],
                "parked": parked,
            },
        )


def park_failed(failure: ScheduleFailure) -> None:
    """Log that unrecordable schedules could not even be parked."""
    logger.error(
        "schedules_park_failed",
        extra={"error_class": failure.error_class, "error": str(failure)[:MAX_ERROR_LENGTH]},
    )


def _error_fields(outcome: ScheduleOutcome) -> dict[str, object]:
    return {
        "max_retries": outcome.max_retries,
        "error_class": outcome.error_class,
        "error": outcome.last_error,
    }


def _log_fields(schedule: DueSchedule) -> dict[str, object]:
    if schedule.ramp_id is not None:
        return {
            **_plain_fields(schedule),
            "ramp_id": str(schedule.ramp_id),
            "stage": schedule.ramp_stage,
        }
    return _plain_fields(schedule)


def _plain_fields(schedule: DueSchedule) -> dict[str, object]:
    return {
        "schedule_id": str(schedule.id),
        "flag_key": schedule.flag_key,
        "environment": schedule.environment,
        "retry_count": schedule.retry_count,
        "scheduled_at": schedule.scheduled_at.isoformat(),
    }
