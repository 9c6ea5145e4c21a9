"""GET /flags/{key}/timeline predicts what the scheduler does: for random pending changes
(some late, some expired, some waiting for a retry, on overlapping fields), running the real
engine at each step's time leaves the flag as the step said, and what the step said expires
or is superseded ends so."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from tests.api.events import call, http_event
from tests.support import T0, run_service

UPDATES = st.sampled_from(
    [
        {"enabled": True},
        {"enabled": False},
        {"rollout_percentage": 30},
        {"rollout_percentage": 70},
        {"enabled": True, "rollout_percentage": 100},
        {"enabled": False, "rollout_percentage": 0},
    ]
)
# (minutes from now it was scheduled for, what it sets, minutes from now of a retry it waits
# for, or None: pending). Two days back is past the default lateness limit of a day.
CHANGE = st.tuples(
    st.sampled_from([-2 * 24 * 60, -90, -5, 0, 3, 10, 45]),
    UPDATES,
    st.none() | st.sampled_from([2, 30]),
)
counter = itertools.count()


def _insert(conn: psycopg.Connection[Any], flag: UUID, change: tuple[Any, ...]) -> UUID:
    minutes, updates, retry_in = change
    row = conn.execute(
        "INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates, status,"
        " retry_count, next_retry_at, last_error, last_error_class)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (
            flag,
            T0 + timedelta(minutes=minutes),
            Jsonb(updates),
            "pending" if retry_in is None else "failed",
            0 if retry_in is None else 1,
            None if retry_in is None else T0 + timedelta(minutes=retry_in),
            None if retry_in is None else "lock_timeout: earlier",
            None if retry_in is None else "lock_timeout",
        ),
    ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(changes=st.lists(CHANGE, min_size=1, max_size=6))
def test_each_step_is_what_the_scheduler_does_at_its_time(
    api: str, changes: list[tuple[Any, ...]]
) -> None:
    key = f"timeline-{next(counter)}"
    created = call(http_event("POST", "/flags", body={"flag_key": key, "rollout_percentage": 50}))
    flag = UUID(created.body["id"])
    with psycopg.connect(api, autocommit=True) as conn:
        for change in changes:
            _insert(conn, flag, change)
        until = T0 + timedelta(hours=2)
        answer = call(
            http_event(
                "GET", f"/flags/{key}/timeline", query={"until": until.isoformat()[:19] + "Z"}
            )
        )
        assert answer.status == 200, answer.body
        steps = answer.body["steps"]
        assert len(steps) == len(changes)  # every change is expected within two hours

        # The scheduler runs at each step's time (the every-minute rule, skipping idle
        # minutes); after the last step of a moment the flag is what that step says.
        for at, group in itertools.groupby(steps, key=lambda step: step["at"]):
            *_, last = group
            run_service(api, datetime.fromisoformat(at))
            flag_now = conn.execute(
                "SELECT enabled, rollout_percentage FROM feature_flags WHERE id = %s", (flag,)
            ).fetchone()
            assert flag_now is not None
            assert (
                dict(zip(("enabled", "rollout_percentage"), flag_now, strict=True))
                == (last["after"])
            ), (at, steps)
        assert answer.body["value_at_until"] == last["after"]

        states = dict(
            conn.execute(
                "SELECT id::text, CASE WHEN status = 'failed' AND last_error_class = 'expired'"
                " THEN 'expired' ELSE status END FROM feature_flag_schedules WHERE flag_id = %s",
                (flag,),
            ).fetchall()
        )
        for step in steps:
            predicted = (
                "expired" if step["expires"] else "superseded" if not step["sets"] else "applied"
            )
            assert states[step["schedule_id"]] == predicted, (step, steps)
