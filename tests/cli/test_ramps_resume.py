"""`ramps resume` in-process, with a run applying the resumed stage and writing to the ramp's
history as soon as the resume commits (the seam a subprocess does not offer): the command
still says the due time its own resume set."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

from flag_scheduler.aws.settings import SchedulerSettings
from flag_scheduler.engine.ramp_rules import CheckedRamp, StagePlan
from flag_scheduler.engine.states import InsufficientData, RampAction
from flag_scheduler.store.api_catalog import ApiCatalog
from flag_scheduler.store.catalog import Catalog
from flag_scheduler.store.ramps import Ramps, ResumedRamp
from flag_scheduler_cli import ramps as ramp_commands
from flag_scheduler_cli.commands import Context
from tests.support import T0, run_service

HOLD = timedelta(minutes=10)


class _RunAfterResume(Ramps):
    """Ramps whose resume is followed, once it has committed, by a scheduler run at `at`
    on its own connection: the race a run can win between the resume and the next read."""

    def __init__(self, conn: psycopg.Connection[Any], database_url: str, at: datetime) -> None:
        super().__init__(conn)
        self._database_url = database_url
        self._at = at

    def resume(self, ramp_id: UUID, *, now: datetime, actor: str) -> ResumedRamp:
        resumed = super().resume(ramp_id, now=now, actor=actor)
        run_service(self._database_url, self._at)
        return resumed


def test_resume_says_its_own_due_time_when_a_run_wrote_to_the_history_after_it(
    database_url: str, conn: psycopg.Connection[Any], catalog: Catalog
) -> None:
    catalog.create_flag("checkout-v2", enabled=True)
    plain = Ramps(conn)
    ramp = plain.create(
        catalog.get_flag("checkout-v2"),
        CheckedRamp((StagePlan({"rollout_percentage": 5}, 600),), None, ()),
        start=T0 + HOLD,
        guard_alarms=[],
        rollback_on_alarm=False,
        insufficient_data=InsufficientData.WAIT,
        now=T0,
        actor="test",
    )
    plain.pause(ramp.id, now=T0, actor="test")  # ten minutes of hold left
    due = T0 + HOLD
    ctx = Context(
        catalog=ApiCatalog(conn),
        now=T0,
        settings=SchedulerSettings(),
        actor="cli:test",
        ramps=_RunAfterResume(conn, database_url, at=due),
    )

    result = ramp_commands.resume(ctx, ramp.id)

    assert result.text.endswith(f"stage 0 due at {due:%Y-%m-%d %H:%M:%SZ}"), result.text
    # The run applied the resumed (last) stage: its rows, not the resume's, are the last ones.
    events = plain.show(ramp.id).events
    assert [(e.action, e.at) for e in events] == [
        (RampAction.CREATED, T0),
        (RampAction.PAUSED, T0),
        (RampAction.RESUMED, T0),
        (RampAction.STAGE_APPLIED, due),
        (RampAction.COMPLETED, due),
    ]
