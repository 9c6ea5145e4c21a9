"""Who kept a run waiting for a flag: the decision between charging a schedule and not."""

from __future__ import annotations

import pytest

from flag_scheduler.engine.records import LockHolder
from flag_scheduler.engine.run_loop import Blocker, blocked_by

SIBLING = LockHolder(pid=101, application_name="flag-scheduler", is_scheduler=True)
APP = LockHolder(pid=202, application_name="orders-service", is_scheduler=False)
NAMELESS = LockHolder(pid=303, application_name="", is_scheduler=False)


@pytest.mark.parametrize(
    ("holders", "blocker"),
    [
        ([SIBLING], Blocker.SIBLING),  # another run: never charged
        ([APP], Blocker.APPLICATION),  # an application's transaction: lock_timeout
        ([NAMELESS], Blocker.APPLICATION),  # a session that names no one is not a run
        ([APP, NAMELESS], Blocker.APPLICATION),  # several sharers (FOR SHARE), none a run
        ([APP, SIBLING], Blocker.SIBLING),  # a run among the holders: it kept us waiting
        ([], Blocker.UNKNOWN),  # finished since, or hidden: look again before charging
    ],
)
def test_a_wait_is_charged_only_when_no_run_of_the_scheduler_held_the_flag(
    holders: list[LockHolder], blocker: Blocker
) -> None:
    assert blocked_by(holders) is blocker
