"""Ramps in the run loop against the in-memory store: a stage's hold counts from its actual
application, a retry holds the ramp, a permanent failure, an expiry or a guard alarm halts
it, and a batch without stages does nothing more than before."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from uuid import UUID

from flag_scheduler.engine import ramps
from flag_scheduler.engine.backoff import BackoffPolicy
from flag_scheduler.engine.notifier import SendReport
from flag_scheduler.engine.records import ClaimedMessage, RunSummary
from flag_scheduler.engine.run_loop import RunPolicy, process_due_schedules
from flag_scheduler.engine.states import (
    AlarmState,
    ErrorClass,
    InsufficientData,
    MessageKind,
    RampAction,
    RampState,
    Status,
)
from flag_scheduler.errors import (
    AlarmsUnavailable,
    PermanentDatabaseError,
    TransientDatabaseError,
)
from tests.engine.fakes import FakeStore
from tests.support import T0, ReadingsClock

POLICY = RunPolicy(
    max_retries=3,
    batch_size=100,
    time_margin_ms=1_000,
    backoff=BackoffPolicy(jitter_seconds=0),
    lock_timeout_ms=2_000,
    statement_timeout_ms=10_000,
    outage_threshold=5,
    max_lateness_seconds=3_600,
)
HOLD = 600


class _Notifier:
    kinds = frozenset({MessageKind.ALERT, MessageKind.FLAG_CHANGED})

    def send(self, messages: list[ClaimedMessage], *, deadline: float) -> SendReport:
        return SendReport()


class _Alarms:
    """Alarm states set by the test; counts the calls."""

    def __init__(self, states: Mapping[str, AlarmState] | None = None) -> None:
        self.states = dict(states or {})
        self.calls: list[list[str]] = []
        self.fail = False

    def alarm_states(self, names: Collection[str]) -> Mapping[str, AlarmState]:
        self.calls.append(sorted(names))
        if self.fail:
            raise AlarmsUnavailable("cloudwatch: throttled")
        return {name: self.states[name] for name in names if name in self.states}


def _run(
    store: FakeStore,
    now: datetime,
    *,
    clock: Callable[[], datetime] | None = None,
    alarms: ramps.AlarmReader | None = None,
) -> RunSummary:
    return process_due_schedules(
        store,
        _Notifier(),
        clock=clock or (lambda: now),
        remaining_ms=lambda: 60_000,
        policy=POLICY,
        alarms=alarms,
    )


def _ticking(start: datetime, step: timedelta) -> Callable[[], datetime]:
    moments = (start + step * i for i in itertools.count())
    return lambda: next(moments)


def test_the_next_stage_is_due_its_hold_after_the_stage_was_actually_applied() -> None:
    store = FakeStore()
    flag = store.add_flag()
    ramp = store.add_ramp(flag, T0, [5, 25, 50], hold_seconds=HOLD)
    # Applied 7 minutes late, by a run whose clock reads T0+7min, then T0+7min+1s, ...
    clock = _ticking(T0 + timedelta(minutes=7), timedelta(seconds=1))
    summary = _run(store, T0, clock=clock)
    first, second = store.stages_of(ramp)
    assert first.status == Status.APPLIED
    assert second.status == Status.PENDING
    assert second.ramp_stage == 1
    # The hold counts from when the run wrote the stage (its clock), not from T0.
    assert second.scheduled_at - (T0 + timedelta(minutes=7)) >= timedelta(seconds=HOLD)
    assert second.scheduled_at - (T0 + timedelta(minutes=7)) <= timedelta(seconds=HOLD + 5)
    assert store.fields(flag)["rollout_percentage"] == 5
    assert store.ramp(ramp).current_stage == 1
    assert store.ramp(ramp).value_before == {"enabled": False, "rollout_percentage": 0}
    assert summary.ramp_stages_applied == 1
    (event,) = (m for m in store.state.outbox if m.kind == MessageKind.FLAG_CHANGED)
    assert (event.payload["ramp_id"], event.payload["stage"]) == (str(ramp), 0)
    assert event.payload["new"] == {"rollout_percentage": 5}
    # Not yet due one second before the hold ends: nothing happens.
    assert _run(store, second.scheduled_at - timedelta(seconds=1)).claimed == 0


class _CommitsStore(FakeStore):
    """Records the clock's last reading when each transaction commits."""

    def __init__(self, clock: ReadingsClock) -> None:
        super().__init__()
        self.clock = clock
        self.commits: list[datetime] = []

    @contextmanager
    def transaction(self, **timeouts: int) -> Iterator[None]:
        with super().transaction(**timeouts):
            yield
        self.commits.append(self.clock.readings[-1])


def test_the_next_stage_hold_counts_from_the_last_reading_before_the_batch_commits() -> None:
    clock = ReadingsClock(T0)
    store = _CommitsStore(clock)
    staged = store.add_flag("a", flag_id=UUID(int=1))
    ramp = store.add_ramp(staged, T0, [5, 25], hold_seconds=HOLD)
    # A schedule decided after the stage whose write fails: the batch falls back to one
    # savepoint each and goes on (reading the clock) after the stage was written.
    other = store.add_schedule(store.add_flag("b", flag_id=UUID(int=2)), T0, {"enabled": True})
    store.failing_outcomes[other] = PermanentDatabaseError(
        "boom", error_class=ErrorClass.DATA_ERROR
    )
    _run(store, T0, clock=clock)
    first, second = store.stages_of(ramp)
    assert first.status == Status.APPLIED
    assert second.scheduled_at == store.commits[0] + timedelta(seconds=HOLD)


def test_next_stages_keep_their_written_due_time_when_the_stamp_fails() -> None:
    store = FakeStore()
    flag = store.add_flag()
    ramp = store.add_ramp(flag, T0, [5, 25], hold_seconds=HOLD)
    store.failing_stamp = PermanentDatabaseError("boom", error_class=ErrorClass.DATA_ERROR)
    _run(store, T0, clock=_ticking(T0, timedelta(seconds=1)))
    first, second = store.stages_of(ramp)
    assert (first.status, second.status) == (Status.APPLIED, Status.PENDING)
    assert timedelta(seconds=HOLD) < second.scheduled_at - T0 < timedelta(seconds=HOLD + 5)


def test_a_ramp_runs_to_completion_with_its_end_state() -> None:
    store = FakeStore()
    flag = store.add_flag()
    ramp = store.add_ramp(flag, T0, [5, 50], end_updates={"enabled": True})
    now = T0
    for _ in range(3):
        _run(store, now)
        now += timedelta(seconds=HOLD)
    rows = store.stages_of(ramp)
    assert [row.ramp_stage for row in rows] == [0, 1, 2]
    assert all(row.status == Status.APPLIED for row in rows)
    assert store.fields(flag) == {"enabled": True, "rollout_percentage": 50}
    assert store.ramp(ramp).state == RampState.COMPLETED
    actions = [event.action for event in store.state.ramp_events]
    assert actions == [RampAction.STAGE_APPLIED] * 3 + [RampAction.COMPLETED]


def test_a_stage_waiting_for_a_retry_holds_the_ramp_and_moves_the_next_stage() -> None:
    store = FakeStore()
    flag = store.add_flag()
    ramp = store.add_ramp(flag, T0, [5, 25])
    store.failing_flags[flag] = TransientDatabaseError("deadlock detected")
    _run(store, T0)
    (first,) = store.stages_of(ramp)  # no second stage while the first waits
    assert first.status == Status.FAILED
    assert first.next_retry_at is not None
    del store.failing_flags[flag]
    retried_at = first.next_retry_at
    _run(store, retried_at)
    first, second = store.stages_of(ramp)
    assert first.status == Status.APPLIED
    assert second.scheduled_at == retried_at + timedelta(seconds=HOLD)


def test_a_permanent_failure_halts_the_ramp_with_one_alert_naming_ramp_stage_and_error() -> None:
    store = FakeStore()
    flag = store.add_flag()
    ramp = store.add_ramp(flag, T0, [5, 25], hold_seconds=HOLD)
    _run(store, T0)
    second = store.stages_of(ramp)[1]
    second.updates = '{"rollout_percentage": 250}'  # invalid: fails for good
    summary = _run(store, second.scheduled_at)
    assert store.ramp(ramp).state == RampState.HALTED
    assert store.ramp(ramp).halt_error_class == ErrorClass.INVALID_UPDATES
    assert len(store.stages_of(ramp)) == 2  # no later stage
    alerts = [m for m in store.state.outbox if m.kind == MessageKind.ALERT]
    assert len(alerts) == 1
    assert alerts[0].payload["ramp_id"] == str(ramp)
    assert alerts[0].payload["stage"] == 1
    assert alerts[0].payload["error_class"] == ErrorClass.INVALID_UPDATES
    assert summary.ramps_halted == 1


def test_an_expired_stage_halts_the_ramp() -> None:
    store = FakeStore()
    flag = store.add_flag()
    ramp = store.add_ramp(flag, T0, [5, 25])
    _run(store, T0 + timedelta(seconds=POLICY.max_lateness_seconds + 1))
    assert store.ramp(ramp).state == RampState.HALTED
    assert store.ramp(ramp).halt_error_class == ErrorClass.EXPIRED
    assert len(store.stages_of(ramp)) == 1


def test_a_guard_alarm_in_alarm_halts_the_ramp_and_rolls_the_flag_back() -> None:
    store = FakeStore()
    flag = store.add_flag(rollout=3)
    ramp = store.add_ramp(flag, T0, [5, 25], guard_alarms=("errors",), rollback_on_alarm=True)
    alarms = _Alarms({"errors": AlarmState.OK})
    _run(store, T0, alarms=alarms)
    alarms.states["errors"] = AlarmState.ALARM
    due = store.stages_of(ramp)[1].scheduled_at
    _run(store, due, alarms=alarms)
    second = store.stages_of(ramp)[1]
    assert second.status == Status.FAILED
    assert second.next_retry_at is None
    assert store.ramp(ramp).state == RampState.HALTED
    assert store.ramp(ramp).halt_error_class == ErrorClass.GUARD_ALARM
    # The rollback is a plain schedule due at once; the same run may already apply it.
    _run(store, due + timedelta(seconds=1), alarms=alarms)
    assert store.fields(flag)["rollout_percentage"] == 3
    assert RampAction.ROLLED_BACK in [e.action for e in store.state.ramp_events]


def test_insufficient_data_waits_uncharged_by_default_and_halts_when_the_ramp_says_so() -> None:
    store = FakeStore()
    flag, other = store.add_flag("a"), store.add_flag("b")
    waits = store.add_ramp(flag, T0, [5, 25], guard_alarms=("quiet",))
    halts = store.add_ramp(
        other, T0, [5, 25], guard_alarms=("quiet",), insufficient_data=InsufficientData.HALT
    )
    alarms = _Alarms({"quiet": AlarmState.INSUFFICIENT_DATA})
    summary = _run(store, T0, alarms=alarms)
    (waiting,) = store.stages_of(waits)
    assert waiting.status == Status.PENDING
    assert waiting.retry_count == 0
    assert store.history_of(waiting.id) == []
    assert store.ramp(halts).state == RampState.HALTED
    # One DescribeAlarms call for the batch, though two ramps name the alarm.
    assert alarms.calls == [["quiet"]]
    assert summary.ramps_halted == 1


def test_a_guard_alarm_rollback_leaves_the_fields_no_stage_sets() -> None:
    store = FakeStore()
    flag = store.add_flag(enabled=True, rollout=3)
    ramp = store.add_ramp(flag, T0, [5, 25], guard_alarms=("errors",), rollback_on_alarm=True)
    alarms = _Alarms({"errors": AlarmState.OK})
    _run(store, T0, alarms=alarms)
    kill_switch = T0 + timedelta(minutes=1)
    store.add_schedule(flag, kill_switch, {"enabled": False})
    _run(store, kill_switch, alarms=alarms)
    alarms.states["errors"] = AlarmState.ALARM
    due = store.stages_of(ramp)[1].scheduled_at
    _run(store, due, alarms=alarms)
    _run(store, due + timedelta(seconds=1), alarms=alarms)
    assert store.ramp(ramp).state == RampState.HALTED
    assert store.fields(flag) == {"enabled": False, "rollout_percentage": 3}


def test_a_ramp_halted_for_insufficient_data_does_not_roll_the_flag_back() -> None:
    store = FakeStore()
    flag = store.add_flag(rollout=3)
    ramp = store.add_ramp(
        flag,
        T0,
        [5, 25],
        guard_alarms=("quiet",),
        rollback_on_alarm=True,
        insufficient_data=InsufficientData.HALT,
    )
    alarms = _Alarms({"quiet": AlarmState.OK})
    _run(store, T0, alarms=alarms)
    alarms.states["quiet"] = AlarmState.INSUFFICIENT_DATA
    due = store.stages_of(ramp)[1].scheduled_at
    _run(store, due, alarms=alarms)
    _run(store, due + timedelta(seconds=1), alarms=alarms)
    assert store.ramp(ramp).state == RampState.HALTED
    assert store.fields(flag)["rollout_percentage"] == 5
    assert RampAction.ROLLED_BACK not in [e.action for e in store.state.ramp_events]


def test_a_stage_waiting_for_alarm_data_past_the_lateness_limit_expires_and_halts() -> None:
    store = FakeStore()
    flag = store.add_flag()
    ramp = store.add_ramp(flag, T0, [5, 25], guard_alarms=("quiet",))
    alarms = _Alarms({"quiet": AlarmState.INSUFFICIENT_DATA})
    _run(store, T0, alarms=alarms)
    assert store.stages_of(ramp)[0].status == Status.PENDING  # waits, within the limit
    _run(store, T0 + timedelta(seconds=POLICY.max_lateness_seconds + 1), alarms=alarms)
    assert store.stages_of(ramp)[0].status == Status.FAILED
    assert store.ramp(ramp).state == RampState.HALTED
    assert store.ramp(ramp).halt_error_class == ErrorClass.EXPIRED


def test_a_stage_parked_as_unrecordable_halts_its_ramp() -> None:
    store = FakeStore()
    flag = store.add_flag()
    ramp = store.add_ramp(flag, T0, [5, 25])
    (stage,) = store.stages_of(ramp)
    store.failing_outcomes[stage.id] = PermanentDatabaseError(
        "value too long", error_class=ErrorClass.DATA_ERROR
    )
    _run(store, T0)
    assert store.stages_of(ramp)[0].status == Status.FAILED  # parked
    assert store.ramp(ramp).state == RampState.HALTED
    assert store.ramp(ramp).halt_error_class == ErrorClass.UNRECORDABLE


def test_a_stage_the_claim_finds_defective_is_parked_and_halts_its_ramp() -> None:
    store = FakeStore()
    flag = store.add_flag()
    ramp = store.add_ramp(flag, T0, [5, 25])
    (stage,) = store.stages_of(ramp)
    stage.defect = "retry_count -1 is outside 0..1000"
    summary = _run(store, T0)
    assert store.stages_of(ramp)[0].status == Status.FAILED  # parked
    assert (summary.claimed, summary.unrecordable) == (1, 1)
    assert store.ramp(ramp).state == RampState.HALTED
    assert store.ramp(ramp).halt_error_class == ErrorClass.UNRECORDABLE
    assert "retry_count -1" in (store.ramp(ramp).halt_reason or "")


def test_a_defective_stage_of_a_ramp_an_operator_holds_waits_with_its_ramp() -> None:
    store = FakeStore()
    flag = store.add_flag()
    ramp = store.add_ramp(flag, T0, [5, 25])
    (stage,) = store.stages_of(ramp)
    stage.defect = "retry_count -1 is outside 0..1000"
    store.held_ramps.add(ramp)
    summary = _run(store, T0)
    assert store.stages_of(ramp)[0].status == Status.PENDING
    assert (summary.claimed, summary.unrecordable) == (0, 0)
    assert store.ramp(ramp).state == RampState.ACTIVE


def test_unreadable_alarms_leave_guarded_stages_due_and_plain_ones_run() -> None:
    store = FakeStore()
    flag, plain_flag = store.add_flag("a"), store.add_flag("b")
    ramp = store.add_ramp(flag, T0, [5], guard_alarms=("errors",))
    plain = store.add_schedule(plain_flag, T0, {"enabled": True})
    alarms = _Alarms()
    alarms.fail = True
    _run(store, T0, alarms=alarms)
    assert store.stages_of(ramp)[0].status == Status.PENDING
    assert store.status(plain) == Status.APPLIED


def test_a_batch_without_stages_sends_no_ramp_statement() -> None:
    store = FakeStore()
    flag = store.add_flag()
    store.add_schedule(flag, T0, {"enabled": True})
    alarms = _Alarms()
    _run(store, T0, alarms=alarms)
    assert not {"lock_ramps", "advance_ramps"} & set(store.calls)
    assert alarms.calls == []  # and no DescribeAlarms call


def test_a_ramp_an_operator_holds_leaves_its_stage_due() -> None:
    store = FakeStore()
    flag = store.add_flag()
    ramp = store.add_ramp(flag, T0, [5, 25])
    store.held_ramps.add(ramp)
    summary = _run(store, T0)
    assert store.stages_of(ramp)[0].status == Status.PENDING
    assert summary.claimed == 0
