"""The Lambda handler: events, logs, metrics, configuration errors, connection reuse."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flag_scheduler.aws import scheduler
from flag_scheduler.errors import ConfigurationError, SystemicFailure
from flag_scheduler.store.catalog import Catalog
from flag_scheduler_cli import fault_injection
from flag_scheduler_cli.local import FakeLambdaContext
from tests.support import backend_pid, insert_ramp, schedule_row

EVENTS = sorted((Path(__file__).resolve().parents[2] / "events").glob("*.json"))
METRICS = {
    "SchedulesApplied",
    "SchedulesRetried",
    "RetrySucceeded",
    "SchedulesFailedPermanently",
    "SchedulesSuperseded",
    "SchedulesUnrecordable",
    "RetryBacklog",
    "RampStagesApplied",
    "RampsHalted",
    "RampsCompleted",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> pytest.MonkeyPatch:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    return monkeypatch


class Output:
    """What the handler printed: JSON log lines and EMF metric lines."""

    def __init__(self, logs: io.StringIO, capsys: pytest.CaptureFixture[str]) -> None:
        self._logs = logs
        self._capsys = capsys

    def lines(self) -> list[dict[str, Any]]:
        text = self._logs.getvalue() + self._capsys.readouterr().out
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
def output(logs: io.StringIO, capsys: pytest.CaptureFixture[str]) -> Output:
    return Output(logs, capsys)


def _due_now(catalog: Catalog, key: str = "banner") -> Any:
    flag = catalog.create_flag(key)
    return catalog.create_schedule(
        flag, datetime.now(UTC) - timedelta(minutes=1), {"enabled": True}
    )


@pytest.mark.parametrize("event_file", EVENTS, ids=[p.name for p in EVENTS])
def test_every_event_file_runs_the_job(
    env: pytest.MonkeyPatch,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    output: Output,
    event_file: Path,
) -> None:
    schedule = _due_now(catalog)
    event = json.loads(event_file.read_text())

    result = scheduler.lambda_handler(event, FakeLambdaContext())

    assert result["applied"] == 1
    assert {"claimed", "retried", "failed_permanently", "superseded", "duration_ms"} <= set(result)
    assert schedule_row(conn, schedule).status == "applied"
    lines = output.lines()
    logs = {line["message"]: line for line in lines if "message" in line}
    assert logs["schedule_applied"]["schedule_id"] == str(schedule)
    assert logs["run_completed"]["applied"] == 1
    assert "cold_start" in logs["run_completed"]
    assert logs["run_completed"].get("correlation_id") == event.get("id")
    emf = [line for line in lines if "_aws" in line and "ColdStart" not in line]
    assert len(emf) == 1
    directive = emf[0]["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "FlagScheduler"
    assert {m["Name"] for m in directive["Metrics"]} >= METRICS
    assert emf[0]["SchedulesApplied"] == [1.0]
    assert emf[0]["SchedulesFailedPermanently"] == [0.0]  # zeros are reported too
    assert emf[0]["RampsHalted"] == [0.0]


def test_ramp_outcomes_are_logged_and_counted(
    env: pytest.MonkeyPatch, conn: psycopg.Connection[Any], catalog: Catalog, output: Output
) -> None:
    now = datetime.now(UTC)
    one_stage = insert_ramp(conn, catalog.create_flag("short"), now - timedelta(minutes=1), [50])
    two_stages = insert_ramp(conn, catalog.create_flag("long"), now - timedelta(minutes=1), [5, 9])
    expiring = insert_ramp(conn, catalog.create_flag("late"), now - timedelta(days=2), [5, 50])

    result = scheduler.lambda_handler({}, FakeLambdaContext())

    assert (result["ramp_stages_applied"], result["ramps_completed"]) == (2, 1)
    assert result["ramps_halted"] == 1
    lines = output.lines()
    by_ramp: dict[tuple[str, str], dict[str, Any]] = {
        (line["message"], line["ramp_id"]): line for line in lines if "ramp_id" in line
    }
    applied = by_ramp[("ramp_stage_applied", str(two_stages))]
    assert (applied["stage"], applied["level"]) == (0, "INFO")
    assert datetime.fromisoformat(applied["next_stage_due_at"]) >= now + timedelta(seconds=600)
    # The last stage: no next one (Powertools leaves out a field that is None).
    assert by_ramp[("ramp_stage_applied", str(one_stage))].get("next_stage_due_at") is None
    assert by_ramp[("ramp_completed", str(one_stage))]["stage"] == 0
    halted = by_ramp[("ramp_halted", str(expiring))]
    assert (halted["level"], halted["stage"], halted["error_class"]) == ("ERROR", 0, "expired")
    assert halted["rolled_back"] is False
    assert ("ramp_completed", str(two_stages)) not in by_ramp
    (emf,) = [line for line in lines if "_aws" in line and "ColdStart" not in line]
    counted = (emf["RampStagesApplied"], emf["RampsCompleted"], emf["RampsHalted"])
    assert counted == ([2.0], [1.0], [1.0])


def test_log_events_carry_the_stable_keys(
    env: pytest.MonkeyPatch,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    output: Output,
) -> None:
    schedule = _due_now(catalog)
    fault_injection.set_fault(conn, catalog.flags()[0].id, "40001", "conflict")
    env.setenv("FLAG_SCHEDULE_MAX_RETRIES", "1")

    scheduler.lambda_handler({}, FakeLambdaContext())
    conn.execute(
        "UPDATE feature_flag_schedules SET next_retry_at = now() - interval '1 second'"
        " WHERE id = %s",
        (schedule,),
    )
    scheduler.lambda_handler({}, FakeLambdaContext())

    logs = {line["message"]: line for line in output.lines() if "message" in line}
    retry = logs["schedule_retry_scheduled"]
    permanent = logs["schedule_failed_permanently"]
    keys = {
        "schedule_id",
        "flag_key",
        "environment",
        "retry_count",
        "max_retries",
        "error_class",
        "error",
    }
    for line in (retry, permanent):
        assert keys <= set(line)
        assert line["schedule_id"] == str(schedule)
        assert line["error_class"] == "serialization_failure"
        assert line["error"] == "serialization_failure: conflict"
        assert line["max_retries"] == 1
    assert retry["retry_count"] == 1
    assert retry["level"] == "WARNING"
    datetime.fromisoformat(retry["next_retry_at"])
    # Powertools drops null keys: a permanent failure has no next_retry_at at all.
    assert "next_retry_at" not in permanent
    assert permanent["level"] == "ERROR"


class _TimeLeftContext(FakeLambdaContext):
    """A Lambda context whose remaining time stands still, so the margin's edge is exact."""

    def __init__(self, *, remaining_ms: int) -> None:
        super().__init__()
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.mark.parametrize(("remaining_ms", "works"), [(19_999, False), (20_001, True)])
def test_the_handler_starts_work_only_with_more_time_left_than_the_margin(
    env: pytest.MonkeyPatch,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    remaining_ms: int,
    works: bool,
) -> None:
    """Kills the mutant that hands the service the time margin in the wrong unit."""
    schedule = _due_now(catalog)
    env.setenv("FLAG_SCHEDULE_TIME_MARGIN_SECONDS", "20")

    result = scheduler.lambda_handler({}, _TimeLeftContext(remaining_ms=remaining_ms))

    assert (result["claimed"], result["applied"], result["stopped_for_time"]) == (
        int(works),
        int(works),
        not works,
    )
    assert schedule_row(conn, schedule).status == ("applied" if works else "pending")


@pytest.mark.parametrize("value", ["11", "abc", "-1"])
def test_a_bad_configuration_fails_before_touching_any_schedule(
    env: pytest.MonkeyPatch, conn: psycopg.Connection[Any], catalog: Catalog, value: str
) -> None:
    schedule = _due_now(catalog)
    env.setenv("FLAG_SCHEDULE_MAX_RETRIES", value)

    with pytest.raises(
        ConfigurationError,
        match=f"FLAG_SCHEDULE_MAX_RETRIES must be an integer 0..10, got '{value}'",
    ):
        scheduler.lambda_handler({}, FakeLambdaContext())

    assert schedule_row(conn, schedule).status == "pending"


def test_a_missing_database_url_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="DATABASE_URL must be set"):
        scheduler.lambda_handler({}, FakeLambdaContext())


def test_the_connection_is_reused_and_replaced_when_broken(
    env: pytest.MonkeyPatch, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    scheduler.lambda_handler({}, FakeLambdaContext())
    first = backend_pid(scheduler._container.connection)
    scheduler.lambda_handler({}, FakeLambdaContext())
    assert backend_pid(scheduler._container.connection) == first

    conn.execute("SELECT pg_terminate_backend(%s)", (first,))
    schedule = _due_now(catalog)
    result = scheduler.lambda_handler({}, FakeLambdaContext())

    assert result["applied"] == 1
    assert backend_pid(scheduler._container.connection) != first
    assert schedule_row(conn, schedule).status == "applied"


def test_an_event_of_any_shape_is_accepted(env: pytest.MonkeyPatch, catalog: Catalog) -> None:
    _due_now(catalog)
    assert scheduler.lambda_handler({"unexpected": ["shape"]}, FakeLambdaContext())["applied"] == 1


def test_an_outage_fails_the_invocation_with_the_evidence(
    env: pytest.MonkeyPatch,
    conn: psycopg.Connection[Any],
    catalog: Catalog,
    output: Output,
) -> None:
    env.setenv("FLAG_SCHEDULE_OUTAGE_THRESHOLD", "3")
    for i in range(6):
        _due_now(catalog, f"flag-{i}")
    for flag in catalog.flags():
        fault_injection.set_fault(conn, flag.id, "57014", "canceling statement")

    with pytest.raises(SystemicFailure):
        scheduler.lambda_handler({}, FakeLambdaContext())

    lines = output.lines()
    aborted = next(line for line in lines if line.get("message") == "run_aborted_systemic")
    assert aborted["error_class"] == "statement_timeout"
    assert aborted["flags"] == 3
    assert aborted["evidence"] == ["statement_timeout: canceling statement"] * 3
    emf = next(line for line in lines if "_aws" in line and "ColdStart" not in line)
    assert emf["RunFailed"] == [1.0]
    statuses = [r[0] for r in conn.execute("SELECT status FROM feature_flag_schedules")]
    assert sorted(statuses) == ["failed"] * 3 + ["pending"] * 3


def test_the_first_invocation_of_a_container_reports_a_cold_start(
    env: pytest.MonkeyPatch, catalog: Catalog, output: Output
) -> None:
    from aws_lambda_powertools.metrics.provider import cold_start

    cold_start.reset_cold_start_flag()  # as in a new container
    _due_now(catalog)
    scheduler.lambda_handler({}, FakeLambdaContext(function_name="flag-scheduler-dev"))
    scheduler.lambda_handler({}, FakeLambdaContext(function_name="flag-scheduler-dev"))

    emf = [line for line in output.lines() if "_aws" in line]
    cold = [line for line in emf if "ColdStart" in line]
    assert len(cold) == 1, "one ColdStart line per container, not per invocation"
    assert cold[0]["ColdStart"] == [1.0]
    assert cold[0]["function_name"] == "flag-scheduler-dev"
    assert cold[0]["service"] == "flag-scheduler"
    (directive,) = cold[0]["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "FlagScheduler"
    assert sorted(directive["Dimensions"][0]) == ["function_name", "service"]
    runs = [line for line in emf if "SchedulesClaimed" in line]
    assert [run["SchedulesApplied"] for run in runs] == [[1.0], [0.0]]
