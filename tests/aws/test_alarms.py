"""Guard alarms through CloudWatch (moto): the adapter reads states in one call, and a ramp
whose guard alarm is in ALARM halts on PostgreSQL and rolls its flag back."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import boto3
import psycopg
import pytest

from flag_scheduler.aws.alarms import CloudWatchAlarms
from flag_scheduler.engine.states import AlarmState
from flag_scheduler.errors import AlarmsUnavailable
from flag_scheduler.store.catalog import Catalog
from tests.support import T0, flag_fields, insert_ramp, ramp_stages, ramp_state, run_service


def _alarm(name: str, state: str) -> None:
    cloudwatch = boto3.client("cloudwatch")
    cloudwatch.put_metric_alarm(
        AlarmName=name,
        MetricName="Errors",
        Namespace="Checkout",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1.0,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
    )
    cloudwatch.set_alarm_state(AlarmName=name, StateValue=state, StateReason="test")


@pytest.mark.usefixtures("aws")
def test_the_adapter_reads_the_states_of_the_named_alarms_that_exist() -> None:
    _alarm("checkout-errors", "ALARM")
    _alarm("checkout-latency", "OK")
    _alarm("unrelated", "ALARM")
    states = CloudWatchAlarms().alarm_states(["checkout-errors", "checkout-latency", "gone"])
    assert states == {"checkout-errors": AlarmState.ALARM, "checkout-latency": AlarmState.OK}


def test_a_failing_call_is_alarms_unavailable() -> None:
    class Broken:
        def describe_alarms(self, **kwargs: Any) -> Any:
            raise ConnectionError("endpoint unreachable")

    with pytest.raises(AlarmsUnavailable, match="DescribeAlarms failed: ConnectionError"):
        CloudWatchAlarms(client=Broken).alarm_states(["checkout-errors"])


@pytest.mark.usefixtures("aws")
def test_a_guard_alarm_in_alarm_halts_the_ramp_and_rolls_the_flag_back(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout", rollout_percentage=2)
    _alarm("checkout-errors", "OK")
    ramp = insert_ramp(
        conn, flag, T0, [5, 25, 50], guard_alarms=["checkout-errors"], rollback_on_alarm=True
    )
    alarms = CloudWatchAlarms()
    run_service(database_url, T0, alarms=alarms)
    assert flag_fields(conn, flag)["rollout_percentage"] == 5
    _alarm("checkout-errors", "ALARM")
    due = ramp_stages(conn, ramp)[1][2]
    run_service(database_url, due, alarms=alarms)

    state, current, error_class, before = ramp_state(conn, ramp)
    assert (state, current, error_class) == ("halted", 1, "guard_alarm")
    assert before == {"enabled": False, "rollout_percentage": 2}
    assert [row[:2] for row in ramp_stages(conn, ramp)] == [(0, "applied"), (1, "failed")]
    # The rollback was due at once: the same run applied it.
    assert flag_fields(conn, flag)["rollout_percentage"] == 2
    actions = [
        row[0]
        for row in conn.execute(
            "SELECT action FROM flag_ramp_events WHERE ramp_id = %s ORDER BY id", (ramp,)
        )
    ]
    assert actions == ["stage_applied", "halted", "rolled_back"]
    # Nothing more happens later: no stage 2.
    run_service(database_url, due + timedelta(hours=1), alarms=alarms)
    assert len(ramp_stages(conn, ramp)) == 2


@pytest.mark.usefixtures("aws")
def test_insufficient_data_leaves_the_stage_due_and_uncharged(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    flag = catalog.create_flag("checkout")
    _alarm("checkout-errors", "INSUFFICIENT_DATA")
    ramp = insert_ramp(conn, flag, T0, [5, 25], guard_alarms=["checkout-errors"])
    summary = run_service(database_url, T0, alarms=CloudWatchAlarms())
    assert summary.claimed == 0
    assert ramp_stages(conn, ramp)[0][1] == "pending"
    assert ramp_state(conn, ramp)[0] == "active"
    _alarm("checkout-errors", "OK")
    run_service(database_url, T0, alarms=CloudWatchAlarms())
    assert ramp_stages(conn, ramp)[0][1] == "applied"
