"""Lambda entry point: load config once, run the service, deliver the outbox, report logs
and metrics."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

from flag_scheduler.aws.alarms import CloudWatchAlarms
from flag_scheduler.aws.notifier import AwsNotifier
from flag_scheduler.aws.secrets import connect_database
from flag_scheduler.aws.settings import SchedulerSettings, check_powertools_environment
from flag_scheduler.engine import delivery, ramps, run_loop
from flag_scheduler.engine.notifier import Notifier
from flag_scheduler.engine.records import RunSummary
from flag_scheduler.engine.states import ErrorClass
from flag_scheduler.errors import (
    DatabaseUnavailable,
    FlagSchedulerError,
    SystemicFailure,
)
from flag_scheduler.store.repository import ScheduleRepository

if TYPE_CHECKING:
    # Typing only: nothing more to import at cold start.
    from aws_lambda_powertools.utilities.typing import LambdaContext

# Powertools reads its variables now; a bad value fails the cold start (Lambda shows this
# error as the init error) with a line naming the variable, not a bare ValueError.
check_powertools_environment(os.environ)
logger = Logger(service="flag-scheduler")
# The template gives each stack its own namespace, so dev and prod in one account keep apart.
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "FlagScheduler",
    service="flag-scheduler",
)
# The service logs through the standard library; give its logger our JSON format and keys.
copy_config_to_registered_loggers(source_logger=logger, include={"flag_scheduler"})


# Told the running totals after each batch (local runs print them).
Progress = Callable[[RunSummary], None]


class _Container:
    """What one Lambda container builds once and reuses across invocations."""

    settings: SchedulerSettings | None = None
    notifier: Notifier | None = None
    alarms: ramps.AlarmReader | None = None
    connection: psycopg.Connection[Any] | None = None
    # time.monotonic() when `connection` was opened.
    connected_at: float = 0.0


_container = _Container()


def utc_now() -> datetime:
    return datetime.now(UTC)


def reset_container() -> None:
    """Forget cached settings and close the cached connection (tests, local runs)."""
    if _container.connection is not None:
        _container.connection.close()
    _container.settings = None
    _container.notifier = None
    _container.alarms = None
    _container.connection = None
    _container.connected_at = 0.0


def _settings() -> SchedulerSettings:
    if _container.settings is None:
        _container.settings = SchedulerSettings.from_env(os.environ)
    return _container.settings


def _notifier() -> Notifier:
    """SNS alerts and FlagChanged events, when their topic and bus are configured."""
    if _container.notifier is None:
        _container.notifier = AwsNotifier.from_settings(_settings())
    return _container.notifier


def _alarms() -> ramps.AlarmReader:
    """The ramps' guard alarms in CloudWatch (no client until a guarded stage is due)."""
    if _container.alarms is None:
        _container.alarms = CloudWatchAlarms()
    return _container.alarms


def _repository(settings: SchedulerSettings, monotonic: Callable[[], float]) -> ScheduleRepository:
    """The cached connection if it is young enough and still answers, else a new one
    (DATABASE_URL or secret)."""
    cached = _cached_repository(settings, monotonic)
    if cached is not None:
        return cached
    if _container.connection is not None:
        _container.connection.close()
    _container.connection = None
    _container.connection = connect_database(settings)
    _container.connected_at = monotonic()
    return ScheduleRepository(_container.connection)


def _cached_repository(
    settings: SchedulerSettings, monotonic: Callable[[], float]
) -> ScheduleRepository | None:
    conn = _container.connection
    if conn is None or conn.closed or conn.broken:
        return None
    age = monotonic() - _container.connected_at
    if age >= settings.connection_max_age_seconds:
        logger.info("cached_connection_expired_reconnecting", extra={"age_seconds": age})
        return None
    try:
        repository = ScheduleRepository(conn)
        repository.ping()
    except DatabaseUnavailable:
        logger.warning("cached_connection_lost_reconnecting")
        return None
    return repository


def run_invocation(
    context: LambdaContext,
    *,
    clock: run_loop.Clock = utc_now,
    progress: Progress | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    alarms: ramps.AlarmReader | None = None,
) -> dict[str, Any]:
    """One scheduler run against the container's database, then the outbox; returns the
    run summary. `progress` is told the running totals after each batch; `monotonic`
    measures the cached connection's age (tests pass their own); `alarms` reads the ramps'
    guard alarms instead of CloudWatch (the demo, which runs without AWS).

    Raises:
        SystemicFailure: an outage stopped the run (its committed batches are notified).
        DatabaseUnavailable: the database cannot be reached or the connection was lost.
        ConfigurationError: a setting, the secret or the login is wrong.
    """
    started = time.monotonic()
    settings = _settings()
    repository = _repository(settings, monotonic)
    notifier = _notifier()
    try:
        summary = run_loop.process_due_schedules(
            repository,
            notifier,
            clock=clock,
            remaining_ms=context.get_remaining_time_in_millis,
            policy=settings.run_policy(),
            request_id=context.aws_request_id,
            progress=progress,
            alarms=alarms or _alarms(),
        )
    except SystemicFailure:
        # The batches committed before the outage stop still get their notifications out.
        _add_delivery_metrics(_deliver(repository, notifier, context, settings, clock))
        raise
    outbox = _deliver(repository, notifier, context, settings, clock)
    return _completed(summary, outbox, duration_ms=round((time.monotonic() - started) * 1000, 1))


def _completed(
    summary: RunSummary, outbox: delivery.DeliveryReport, *, duration_ms: float
) -> dict[str, Any]:
    """The run's metrics, its log line and the summary the handler returns."""
    _add_run_metrics(summary, outbox, duration_ms)
    result = {
        **summary.as_dict(),
        "retry_backlog": outbox.retry_backlog,
        **outbox.as_dict(),
        "duration_ms": duration_ms,
    }
    logger.info("run_completed", extra=result)
    return result


def _add_run_metrics(
    summary: RunSummary, outbox: delivery.DeliveryReport, duration_ms: float
) -> None:
    for name, value in (
        ("SchedulesClaimed", summary.claimed),
        ("SchedulesApplied", summary.applied),
        ("SchedulesRetried", summary.retried),
        ("RetrySucceeded", summary.retry_succeeded),
        ("SchedulesFailedPermanently", summary.failed_permanently),
        ("SchedulesExpired", summary.expired),
        ("SchedulesSuperseded", summary.superseded),
        ("SchedulesUnrecordable", summary.unrecordable),
        ("RampStagesApplied", summary.ramp_stages_applied),
        ("RampsHalted", summary.ramps_halted),
        ("RampsCompleted", summary.ramps_completed),
    ):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    if outbox.retry_backlog is not None:
        metrics.add_metric(name="RetryBacklog", unit=MetricUnit.Count, value=outbox.retry_backlog)
    _add_delivery_metrics(outbox)
    metrics.add_metric(name="RunDuration", unit=MetricUnit.Milliseconds, value=duration_ms)
    for lag in summary.lag_seconds:
        metrics.add_metric(name="ScheduleLagSeconds", unit=MetricUnit.Seconds, value=lag)


def _deliver(
    repository: ScheduleRepository,
    notifier: Notifier,
    context: LambdaContext,
    settings: SchedulerSettings,
    clock: run_loop.Clock,
) -> delivery.DeliveryReport:
    """Send the outbox until the time margin before the Lambda timeout, then count the
    backlogs (never raises)."""
    remaining_ms = context.get_remaining_time_in_millis() - settings.time_margin_seconds * 1000
    report = delivery.deliver_outbox(
        repository,
        notifier,
        clock=clock,
        deadline=time.monotonic() + remaining_ms / 1000,
        statement_timeout_ms=settings.statement_timeout_ms,
    )
    if report.stopped_for_time and report.backlog != 0:
        # Not an error (the next run delivers), but a sign the runs have no time to spare.
        logger.warning("outbox_delivery_stopped_for_time", extra=report.as_dict())
    return report


def _add_delivery_metrics(report: delivery.DeliveryReport) -> None:
    for name, value in (
        ("NotificationsDelivered", report.delivered),
        ("AlertPublishFailures", report.alert_failures),
        ("FlagEventFailures", report.event_failures),
        ("NotificationsDiscarded", report.discarded),
    ):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    if report.backlog is not None:
        metrics.add_metric(name="OutboxBacklog", unit=MetricUnit.Count, value=report.backlog)


def _outage_evidence(exc: SystemicFailure | DatabaseUnavailable) -> dict[str, Any]:
    if isinstance(exc, SystemicFailure):
        return {
            "error_class": exc.error_class,
            "flags": exc.flags,
            "evidence": exc.evidence,
            "error": str(exc),
        }
    return {"error_class": ErrorClass.CONNECTION_LOST, "error": str(exc)}


# The cold-start metric (ColdStart, by function_name and service) is its own EMF line, written
# before the run by the first invocation of each container. Powertools writes it even with
# POWERTOOLS_METRICS_DISABLED, so it is asked for only when metrics are on.
@metrics.log_metrics(capture_cold_start_metric=not is_metrics_disabled())
@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE)
def lambda_handler(
    event: Any, context: LambdaContext, *, progress: Progress | None = None
) -> dict[str, Any]:
    """EventBridge entry point. The event is only read for its id (the correlation id):
    what is due is decided by the database, whatever the event's shape. Lambda passes no
    `progress`; local runs (`flag-scheduler invoke`) pass one to print each batch."""
    try:
        result = run_invocation(context, progress=progress)
    except (SystemicFailure, DatabaseUnavailable) as exc:
        # An outage: fail the invocation (the Errors alarm fires) without burning retries.
        logger.error("run_aborted_systemic", extra=_outage_evidence(exc))
        metrics.add_metric(name="RunFailed", unit=MetricUnit.Count, value=1)
        raise
    except FlagSchedulerError as exc:
        # The invocation fails (and the Errors alarm fires); say why in one line first.
        logger.error("run_failed", extra={"error_class": type(exc).__name__, "error": str(exc)})
        metrics.add_metric(name="RunFailed", unit=MetricUnit.Count, value=1)
        raise
    metrics.add_metric(name="RunFailed", unit=MetricUnit.Count, value=0)
    return result
