"""Model-based test: random operations against the real scheduler and PostgreSQL, checked
after every step against a plain in-memory model of what the contract promises."""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg.types.json import Jsonb

from flag_scheduler.engine.backoff import BackoffPolicy, retry_delay
from flag_scheduler.engine.notifier import NullNotifier
from flag_scheduler.engine.records import MAX_UPDATES_BYTES, FlagUpdates, RunSummary
from flag_scheduler.engine.run_loop import RunPolicy, process_due_schedules
from flag_scheduler.errors import InvalidUpdates, StateConflict, SystemicFailure
from flag_scheduler.store.catalog import Catalog
from flag_scheduler.store.ramps import Ramps
from flag_scheduler.store.repository import ScheduleRepository
from flag_scheduler_cli import fault_injection
from tests.support import T0, insert_ramp

FLAGS = 4
# Small numbers make the interesting cases common: retries run out, changes expire, three
# failing flags in a row look like an outage.
POLICY = RunPolicy(
    max_retries=2,
    batch_size=1000,  # one batch per run: the claim order inside it is then exact
    time_margin_ms=1_000,
    backoff=BackoffPolicy(base_seconds=60, cap_seconds=600, jitter_seconds=30),
    lock_timeout_ms=10_000,
    statement_timeout_ms=10_000,
    max_lateness_seconds=4 * 3600,
    outage_threshold=3,
)
RETRYABLE = {
    "40001": "serialization_failure",
    "40P01": "deadlock",
    "55P03": "lock_timeout",
    "57014": "statement_timeout",
}
INVALID_UPDATES: list[Any] = [
    {},  # empty
    {"colour": "red"},  # unknown key
    {"enabled": "yes"},  # wrong type
    {"enabled": 1},  # 1 is not a boolean
    {"rollout_percentage": 101},  # out of range
    {"rollout_percentage": 50.5},  # not an integer
    {"rollout_percentage": None},  # null
    {"enabled": True, "padding": "x" * (MAX_UPDATES_BYTES + 1)},  # over the size limit
    [{"enabled": True}],  # not an object
    None,  # JSON null
]
TABLES = (
    "feature_flag_schedule_attempts, feature_flag_schedules, feature_flags,"
    " fault_injection, fault_injection_attempts, scheduler_run_state,"
    " flag_ramp_events, flag_ramps"
)

valid_updates = st.one_of(
    st.fixed_dictionaries({"enabled": st.booleans()}),
    st.fixed_dictionaries({"rollout_percentage": st.integers(0, 100)}),
    st.fixed_dictionaries({"enabled": st.booleans(), "rollout_percentage": st.integers(0, 100)}),
)
# (flag, minutes from now, updates, max_retries): mostly due, some in the future.
NEW_SCHEDULE = st.tuples(
    st.integers(0, FLAGS - 1),
    st.integers(-300, 0) | st.integers(1, 180),
    valid_updates,
    st.none() | st.integers(0, 3),
)

# What the runs did over a whole test, so a generator that never reaches a case fails.
COVERAGE: Counter[str] = Counter()


@dataclass
class Schedule:
    """The model of one schedule row and its history."""

    id: UUID
    flag: UUID
    scheduled_at: datetime
    updates: Any
    max_retries: int | None
    status: str = "pending"
    retry_count: int = 0
    next_retry_at: datetime | None = None
    failed_at: datetime | None = None
    last_error_class: str | None = None
    applied_at: datetime | None = None
    history: list[tuple[int | None, str, str | None]] = field(default_factory=list)
    # A ramp's stage: its ramp and stage number.
    ramp: UUID | None = None
    stage: int | None = None

    @property
    def order(self) -> tuple[datetime, UUID]:
        return (self.scheduled_at, self.id)

    @property
    def limit(self) -> int:
        return self.max_retries if self.max_retries is not None else POLICY.max_retries

    def due(self, now: datetime) -> bool:
        if self.status == "pending":
            return self.scheduled_at <= now
        return (
            self.status == "failed"
            and self.next_retry_at is not None
            and (self.next_retry_at <= now)
        )

    def fields(self) -> dict[str, bool | int] | None:
        """The fields it sets, or None when the scheduler must refuse the document."""
        # Every document here is ASCII and jsonb prints it with json.dumps's spacing.
        if len(json.dumps(self.updates)) > MAX_UPDATES_BYTES:
            return None
        try:
            return FlagUpdates.from_document(self.updates).fields()
        except InvalidUpdates:
            return None


@dataclass
class Ramp:
    """The model of one ramp: its stages' rollouts, its hold, where it is."""

    id: UUID
    flag: UUID
    rollouts: list[int]
    hold: timedelta
    state: str = "active"
    current: int = 0
    paused_remaining: float = 0.0


UNFINISHED = ("active", "paused", "halted")
# Operator actions and the ramp states that allow them (abort with rollback is left to
# tests/system/test_ramps.py and tests/store/test_ramps.py).
STEERING = {"pause": ("active",), "resume": ("paused", "halted"), "abort": UNFINISHED}

# (flag, rollouts, hold in minutes): two to four stages.
NEW_RAMP = st.tuples(
    st.integers(0, FLAGS - 1),
    st.lists(st.integers(0, 100), min_size=2, max_size=3),
    st.sampled_from([1, 5, 10]),
)


def _run(conn: psycopg.Connection[Any], now: datetime) -> RunSummary:
    return process_due_schedules(
        ScheduleRepository(conn),
        NullNotifier(),
        clock=lambda: now,
        remaining_ms=lambda: 60_000,
        policy=POLICY,
        request_id="model",
    )


class SchedulerMachine(RuleBasedStateMachine):
    """Drives the real scheduler; `Schedule` and `flags` are the model it must match."""

    conn: psycopg.Connection[Any]
    run_conns: tuple[psycopg.Connection[Any], psycopg.Connection[Any]]

    def __init__(self) -> None:
        super().__init__()
        self.conn.execute(f"TRUNCATE {TABLES}")
        self.catalog = Catalog(self.conn)
        self.now = T0
        self.flag_ids = sorted(self.catalog.create_flag(f"flag-{i}") for i in range(FLAGS))
        self.flags: dict[UUID, dict[str, bool | int]] = {
            f: {"enabled": False, "rollout_percentage": 0} for f in self.flag_ids
        }
        self.faults_left: dict[UUID, int] = dict.fromkeys(self.flag_ids, 0)
        self.fault_sqlstate: dict[UUID, str] = {}
        self.schedules: dict[UUID, Schedule] = {}
        self.ramps: dict[UUID, Ramp] = {}
        # Stage schedules the last run must have created: (ramp, stage, due, updates).
        self.new_stages: set[tuple[UUID, int, datetime, str]] = set()

    # --- writers and operators ---

    @initialize(schedules=st.lists(NEW_SCHEDULE, min_size=4, max_size=12))
    def some_schedules(self, schedules: list[tuple[Any, ...]]) -> None:
        for args in schedules:
            self.create_schedule(*args)

    @rule(args=NEW_SCHEDULE)
    def create_one(self, args: tuple[Any, ...]) -> None:
        self.create_schedule(*args)

    def create_schedule(
        self, flag: int, minutes: int, updates: dict[str, Any], max_retries: int | None
    ) -> None:
        flag_id = self.flag_ids[flag]
        at = self.now + timedelta(minutes=minutes)
        sid = self.catalog.create_schedule(flag_id, at, updates, max_retries=max_retries)
        self.schedules[sid] = Schedule(sid, flag_id, at, updates, max_retries)

    @rule(args=NEW_RAMP)
    def start_ramp(self, args: tuple[int, list[int], int]) -> None:
        flag, rollouts, minutes = args
        flag_id = self.flag_ids[flag]
        if any(r.flag == flag_id and r.state in UNFINISHED for r in self.ramps.values()):
            return  # one unfinished ramp per flag
        hold = timedelta(minutes=minutes)
        ramp_id = insert_ramp(
            self.conn, flag_id, self.now, rollouts, hold_seconds=int(hold.total_seconds())
        )
        self.ramps[ramp_id] = Ramp(ramp_id, flag_id, rollouts, hold)
        row = self.conn.execute(
            "SELECT id FROM feature_flag_schedules WHERE ramp_id = %s", (ramp_id,)
        ).fetchone()
        assert row is not None
        updates = {"rollout_percentage": rollouts[0]}
        self.schedules[row[0]] = Schedule(
            row[0], flag_id, self.now, updates, None, ramp=ramp_id, stage=0
        )
        COVERAGE["ramps"] += 1

    @rule(index=st.integers(0, 1000), action=st.sampled_from(sorted(STEERING)))
    def steer_a_ramp(self, index: int, action: str) -> None:
        # Mostly a ramp the action suits; now and then one it does not (refused).
        suited = [r for r in self.ramps.values() if r.state in STEERING[action]]
        refused = [r for r in self.ramps.values() if r.state not in (*STEERING[action], "halted")]
        candidates = suited if suited and index % 5 else refused
        if not candidates:
            return
        ramp = candidates[index % len(candidates)]
        if ramp.state not in STEERING[action]:
            with pytest.raises(StateConflict):
                getattr(Ramps(self.conn), action)(ramp.id, now=self.now, actor="model")
            COVERAGE["ramp_refused"] += 1
            return
        self._steer(ramp, action)

    def _steer(self, ramp: Ramp, action: str) -> None:
        """Pause, resume or abort `ramp` (whose state allows it), in the database and the
        model."""
        store = Ramps(self.conn)
        live = next(
            (
                s
                for s in self.schedules.values()
                if s.ramp == ramp.id and (s.status == "pending" or s.next_retry_at is not None)
            ),
            None,
        )
        if action == "resume" and ramp.state == "halted":
            self._resume_halted(store, ramp)
            return
        if action == "resume":
            resumed = store.resume(ramp.id, now=self.now, actor="model")
            due = self.now + timedelta(seconds=ramp.paused_remaining)
            assert (resumed.stage, resumed.due_at) == (ramp.current, due)
            updates = json.dumps({"rollout_percentage": ramp.rollouts[ramp.current]})
            self.new_stages.add((ramp.id, ramp.current, due, updates))
            self._absorb_new_stages()
            ramp.state = "active"
        else:
            if action == "pause":
                store.pause(ramp.id, now=self.now, actor="model")
                due = live.next_retry_at or live.scheduled_at if live is not None else self.now
                ramp.paused_remaining = round(max((due - self.now).total_seconds(), 0.0), 3)
            else:
                store.abort(ramp.id, now=self.now, actor="model")
            ramp.state = "paused" if action == "pause" else "aborted"
            if live is not None:
                live.status, live.next_retry_at = "cancelled", None
        COVERAGE[f"ramp_{action}"] += 1

    @rule(index=st.integers(0, 1000))
    def resume_a_halted_ramp(self, index: int) -> None:
        # No precondition: whether a ramp halted can depend on how two concurrent runs
        # interleaved, and a rule enabled by it would make the draws differ between replays.
        halted = [r for r in self.ramps.values() if r.state == "halted"]
        if halted:
            self._steer(halted[index % len(halted)], "resume")

    def _resume_halted(self, store: Ramps, ramp: Ramp) -> None:
        """Resume a halted ramp: its failed stage is requeued, due now, its retries afresh."""
        (failed,) = (
            s
            for s in self.schedules.values()
            if s.ramp == ramp.id and s.stage == ramp.current and s.status == "failed"
        )
        assert failed.next_retry_at is None  # it failed for good: that halted the ramp
        resumed = store.resume(ramp.id, now=self.now, actor="model")
        assert (resumed.stage, resumed.schedule_id, resumed.due_at) == (
            ramp.current,
            failed.id,
            self.now,
        )
        failed.status, failed.scheduled_at, failed.retry_count = "pending", self.now, 0
        failed.failed_at = failed.last_error_class = None
        ramp.state = "active"
        COVERAGE["ramp_resume_halted"] += 1

    @rule(index=st.integers(0, 1000), seconds=st.integers(0, 1800))
    def pause_and_resume_later(self, index: int, seconds: int) -> None:
        active = [r for r in self.ramps.values() if r.state == "active"]
        if not active:
            return
        ramp = active[index % len(active)]
        self._steer(ramp, "pause")
        self.move_the_clock(seconds)  # no run in between: the hold clock stands still
        self._steer(ramp, "resume")

    def _ramp_outcome(self, s: Schedule) -> None:
        """What the stage `s` just decided does to its ramp, in the model."""
        if s.ramp is None or s.stage is None:
            return
        ramp = self.ramps[s.ramp]
        if s.status in ("applied", "superseded"):
            if s.stage + 1 >= len(ramp.rollouts):
                ramp.state, ramp.current = "completed", s.stage
                COVERAGE["ramp_completed"] += 1
                return
            ramp.current = s.stage + 1
            updates = json.dumps({"rollout_percentage": ramp.rollouts[s.stage + 1]})
            self.new_stages.add((ramp.id, s.stage + 1, self.now + ramp.hold, updates))
        elif s.status == "failed" and s.next_retry_at is None:
            ramp.state, ramp.current = "halted", s.stage
            COVERAGE["ramp_halted"] += 1

    def _absorb_new_stages(self) -> None:
        """The stage schedules the run created are exactly those the model predicted."""
        found = {
            (row[1], row[2], row[3], json.dumps(row[4])): row[0]
            for row in self.conn.execute(
                "SELECT id, ramp_id, ramp_stage, scheduled_at, updates"
                " FROM feature_flag_schedules WHERE ramp_id IS NOT NULL AND NOT (id = ANY(%s))",
                (list(self.schedules),),
            )
        }
        assert set(found) == self.new_stages, (set(found), self.new_stages)
        for (ramp_id, stage, due, updates), sid in found.items():
            flag = self.ramps[ramp_id].flag
            self.schedules[sid] = Schedule(
                sid, flag, due, json.loads(updates), None, ramp=ramp_id, stage=stage
            )
        self.new_stages = set()

    @rule(
        flag=st.integers(0, FLAGS - 1),
        times=st.integers(1, 4),
        sqlstate=st.sampled_from(sorted(RETRYABLE)),
    )
    def fail_next_attempts(self, flag: int, times: int, sqlstate: str) -> None:
        # Counted here, in the model: before each run the faults it predicts are handed to
        # the database as (schedule, attempt) pairs, which no rollback can undo.
        flag_id = self.flag_ids[flag]
        self.faults_left[flag_id] = times
        self.fault_sqlstate[flag_id] = sqlstate

    @rule(
        times=st.integers(1, 3),
        sqlstate=st.sampled_from(sorted(RETRYABLE)),
        updates=st.lists(valid_updates, min_size=FLAGS, max_size=FLAGS),
    )
    def outage_while_every_flag_has_a_change_due(
        self, times: int, sqlstate: str, updates: list[dict[str, Any]]
    ) -> None:
        # A systemic outage: the same error everywhere, the way a failover looks.
        for flag in range(FLAGS):
            self.create_schedule(flag, 0, updates[flag], None)
            self.fail_next_attempts(flag, times, sqlstate)

    def _open(self) -> list[Schedule]:
        return [s for s in self.schedules.values() if s.status in ("pending", "failed")]

    # An index, not a drawn schedule, and no precondition: after concurrent runs the model
    # takes outcomes from the database, so what is open can differ between replays of one
    # example; neither the draws nor which rules are enabled may depend on it.
    @rule(index=st.integers(0, 1000), updates=st.sampled_from(INVALID_UPDATES))
    def make_a_payload_invalid(self, index: int, updates: Any) -> None:
        candidates = [s for s in self._open() if s.status == "pending" or s.next_retry_at]
        if not candidates:
            return
        schedule = candidates[index % len(candidates)]
        self.conn.execute(
            "UPDATE feature_flag_schedules SET updates = %s WHERE id = %s",
            (Jsonb(updates), schedule.id),
        )
        schedule.updates = updates

    @precondition(lambda self: bool(self.schedules))
    @rule(index=st.integers(0, 1000))
    def cancel(self, index: int) -> None:
        candidates = list(self.schedules.values())
        schedule = candidates[index % len(candidates)]
        # a ramp's stage changes only through its ramp
        cancellable = schedule.ramp is None and (
            schedule.status == "pending"
            or (schedule.status == "failed" and schedule.next_retry_at is not None)
        )
        if not cancellable:
            with pytest.raises(StateConflict):
                self.catalog.cancel(schedule.id, now=self.now, actor="model")
            return
        self.catalog.cancel(schedule.id, now=self.now, actor="model")
        schedule.status, schedule.next_retry_at = "cancelled", None
        COVERAGE["cancelled"] += 1
        schedule.history.append((None, "cancelled", None))

    @rule(seconds=st.integers(0, 900) | st.integers(900, 3 * 3600) | st.integers(-3600, -1))
    def move_the_clock(self, seconds: int) -> None:
        # Negative: the clock handed to the scheduler goes backwards between runs.
        self.now += timedelta(seconds=seconds)

    # --- the scheduler ---

    @rule(seconds=st.integers(0, 900))
    def wait_and_invoke(self, seconds: int) -> None:
        self.move_the_clock(seconds)
        self.invoke()

    @rule()
    def invoke(self) -> None:
        expected, outage, planned = self._simulate_run()
        fault_injection.clear_attempt_faults(self.conn)
        for schedule_id, attempt, sqlstate in planned:
            fault_injection.fail_attempt(self.conn, schedule_id, attempt, sqlstate, "injected")
        COVERAGE["outage"] += outage
        if not outage:
            for name, count in zip(
                ("applied", "retried", "superseded", "failed", "expired"), expected[1:], strict=True
            ):
                COVERAGE[name] += count
        if outage:
            with pytest.raises(SystemicFailure):
                _run(self.run_conns[0], self.now)
            self._absorb_new_stages()
            return
        summary = _run(self.run_conns[0], self.now)
        self._absorb_new_stages()
        got = (summary.claimed, summary.applied, summary.retried, summary.superseded)
        assert got == expected[:4], (got, expected)
        assert (summary.failed_permanently, summary.expired) == expected[4:]

    @rule()
    def invoke_twice_at_once(self) -> None:
        # Not a precondition: which faults are left depends on outcomes the model may have
        # taken from the database (see make_a_payload_invalid).
        if any(self.faults_left.values()):
            return
        due = sorted((s for s in self.schedules.values() if s.due(self.now)), key=lambda s: s.id)
        fault_injection.clear_attempt_faults(self.conn)
        start = threading.Barrier(2)
        summaries: list[RunSummary] = []
        errors: list[BaseException] = []

        def run(conn: psycopg.Connection[Any]) -> None:
            try:
                start.wait(timeout=10)
                summaries.append(_run(conn, self.now))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(c,)) for c in self.run_conns]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == [], errors
        COVERAGE["concurrent"] += 1
        assert sum(s.claimed for s in summaries) == len(due)  # each claimed by one run only
        self._absorb_concurrent_outcomes(due)
        for s in due:
            self._ramp_outcome(s)
        self._absorb_new_stages()
        assert sum(s.applied for s in summaries) == sum(1 for s in due if s.status == "applied")

    def _simulate_run(self) -> tuple[tuple[int, ...], bool, list[tuple[UUID, int, str]]]:
        """Apply one run to the model: the summary counts, whether it stops as an outage,
        and the attempts that fail, as (schedule, attempt number, SQLSTATE)."""
        planned: list[tuple[UUID, int, str]] = []
        counts = Counter[str]()
        streak: list[Any] = [None, set()]  # the failure streak: error class, flags
        due = sorted(
            (s for s in self.schedules.values() if s.due(self.now)),
            key=lambda s: (s.flag, s.scheduled_at, s.id),
        )
        for s in due:
            outage = self._simulate_one(s, planned, counts, streak)
            self._ramp_outcome(s)
            if outage:
                return (), True, planned  # the rest stays as it was, uncharged
        names = ("applied", "retried", "superseded", "failed", "expired")
        return (len(due), *(counts[name] for name in names)), False, planned

    def _simulate_one(
        self,
        s: Schedule,
        planned: list[tuple[UUID, int, str]],
        counts: Counter[str],
        streak: list[Any],
    ) -> bool:
        """One due schedule in the model's run; True when it makes the run an outage."""
        attempt = s.retry_count + 1
        fields = s.fields()
        if fields is None:
            self._fail_permanently(s, attempt, "invalid_updates", "failed_permanently")
            counts["failed"] += 1
            return False
        taken = {
            name
            for other in self.schedules.values()
            if other.flag == s.flag and other.status == "applied" and other.order > s.order
            for name in (other.fields() or {})
        }
        remaining = {k: v for k, v in fields.items() if k not in taken}
        if not remaining:
            # Nothing left to set, however late: superseded, not expired.
            s.status, s.next_retry_at, s.last_error_class = "superseded", None, None
            s.history.append((attempt, "superseded", None))
            counts["superseded"] += 1
            streak[:] = [None, set()]
            return False
        if self._late(s):
            self._fail_permanently(s, attempt, "expired", "expired")
            counts["failed"] += 1
            counts["expired"] += 1
            return False
        if self.faults_left[s.flag] > 0:
            self.faults_left[s.flag] -= 1
            planned.append((s.id, attempt, self.fault_sqlstate[s.flag]))
            error_class = RETRYABLE[self.fault_sqlstate[s.flag]]
            if error_class != streak[0]:
                streak[:] = [error_class, set()]
            streak[1].add(s.flag)
            if s.retry_count < s.limit:
                s.next_retry_at = self.now + retry_delay(POLICY.backoff, s.retry_count, s.id)
                s.status, s.failed_at = "failed", self.now
                s.retry_count += 1
                s.last_error_class = error_class
                s.history.append((attempt, "retry_scheduled", error_class))
                counts["retried"] += 1
            else:
                self._fail_permanently(s, attempt, error_class, "failed_permanently")
                counts["failed"] += 1
            return len(streak[1]) >= POLICY.outage_threshold
        self.flags[s.flag].update(remaining)
        s.status, s.applied_at, s.next_retry_at = "applied", self.now, None
        s.last_error_class = None
        s.history.append((attempt, "applied", None))
        counts["applied"] += 1
        streak[:] = [None, set()]
        return False

    def _late(self, s: Schedule) -> bool:
        return self.now - s.scheduled_at > timedelta(seconds=POLICY.max_lateness_seconds)

    def _fail_permanently(self, s: Schedule, attempt: int, error_class: str, outcome: str) -> None:
        s.status, s.next_retry_at, s.last_error_class = "failed", None, error_class
        s.history.append((attempt, outcome, error_class))

    def _absorb_concurrent_outcomes(self, due: list[Schedule]) -> None:
        """Two runs split the due schedules in an order the model cannot know: whether an
        older change is applied or superseded depends on it. Take each status from the
        database after checking it is one the contract allows, then recompute the flags."""
        rows = {
            row[0]: row[1:]
            for row in self.conn.execute(
                "SELECT id, status, applied_at FROM feature_flag_schedules WHERE id = ANY(%s)",
                ([s.id for s in due],),
            )
        }
        for s in due:
            status, applied_at = rows[s.id]
            attempt = s.retry_count + 1
            if s.fields() is None:
                self._fail_permanently(s, attempt, "invalid_updates", "failed_permanently")
            elif status == "failed" and self._late(s):
                self._fail_permanently(s, attempt, "expired", "expired")
            else:
                # A late change is expired unless later changes left it nothing to set.
                assert status in ("applied", "superseded"), (s, status)
                assert status == "superseded" or not self._late(s), (s, status)
                s.status, s.next_retry_at, s.last_error_class = status, None, None
                s.applied_at = applied_at if status == "applied" else None
                s.history.append((attempt, status, None))
        for s in due:
            if s.status == "superseded":
                later = {
                    name
                    for other in self.schedules.values()
                    if other.flag == s.flag and other.status == "applied" and other.order > s.order
                    for name in (other.fields() or {})
                }
                assert set(s.fields() or {}) <= later, f"{s.id} superseded but not covered"
        latest: dict[tuple[UUID, str], tuple[tuple[datetime, UUID], bool | int]] = {}
        for s in self.schedules.values():
            if s.status == "applied":
                for name, value in (s.fields() or {}).items():
                    key = (s.flag, name)
                    if key not in latest or s.order > latest[key][0]:
                        latest[key] = (s.order, value)
        for (flag_id, name), (_, value) in latest.items():
            self.flags[flag_id][name] = value

    # --- after every step: the database is the model ---

    @invariant()
    def database_matches_the_model(self) -> None:
        rows = {
            row[0]: row[1:]
            for row in self.conn.execute(
                "SELECT id, status, retry_count, next_retry_at, last_error_class, applied_at"
                " FROM feature_flag_schedules"
            )
        }
        assert set(rows) == set(self.schedules)  # nothing lost, nothing invented
        history: dict[UUID, list[tuple[Any, ...]]] = {sid: [] for sid in rows}
        for sid, attempt, outcome, error_class in self.conn.execute(
            "SELECT schedule_id, attempt, outcome, error_class"
            " FROM feature_flag_schedule_attempts ORDER BY id"
        ):
            history[sid].append((attempt, outcome, error_class))
        for sid, s in self.schedules.items():
            want = (s.status, s.retry_count, s.next_retry_at, s.last_error_class, s.applied_at)
            assert rows[sid] == want, (sid, rows[sid], want)
            assert history[sid] == s.history, (sid, history[sid], s.history)
            assert s.retry_count <= s.limit
            if s.next_retry_at is not None:
                assert s.failed_at is not None
                n = s.retry_count - 1
                low = min(POLICY.backoff.cap_seconds, POLICY.backoff.base_seconds * 2**n)
                wait = (s.next_retry_at - s.failed_at).total_seconds()
                assert low <= wait <= low + POLICY.backoff.jitter_seconds
        flags = {
            row[0]: {"enabled": row[1], "rollout_percentage": row[2]}
            for row in self.conn.execute(
                "SELECT id, enabled, rollout_percentage FROM feature_flags"
            )
        }
        assert flags == self.flags
        self._latest_scheduled_wins(flags)
        ramps = {
            row[0]: (row[1], row[2])
            for row in self.conn.execute("SELECT id, state, current_stage FROM flag_ramps")
        }
        assert ramps == {r.id: (r.state, r.current) for r in self.ramps.values()}

    def _latest_scheduled_wins(self, flags: dict[UUID, dict[str, Any]]) -> None:
        """Independently of the simulation: each field holds its latest applied value."""
        applied = sorted(
            (s for s in self.schedules.values() if s.status == "applied"), key=lambda s: s.order
        )
        expected: dict[UUID, dict[str, Any]] = {
            f: {"enabled": False, "rollout_percentage": 0} for f in self.flag_ids
        }
        for s in applied:
            expected[s.flag].update(s.fields() or {})
        assert flags == expected


def _machine_test(database_url: str, examples: int, steps: int, *, derandomize: bool) -> None:
    with (
        psycopg.connect(database_url, autocommit=True) as conn,
        psycopg.connect(database_url, autocommit=True) as first,
        psycopg.connect(database_url, autocommit=True) as second,
    ):
        fault_injection.install(conn)
        SchedulerMachine.conn = conn
        SchedulerMachine.run_conns = (first, second)
        COVERAGE.clear()
        run_state_machine_as_test(
            SchedulerMachine,
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                deadline=None,
                derandomize=derandomize,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    print(f"model test coverage: {dict(COVERAGE)}")
    every_case = (
        *("outage", "applied", "retried", "superseded", "failed", "expired", "concurrent"),
        # Ramps, paused and resumed. (Hypothesis switches rules off at random per example,
        # so whether a ramp completes, halts, is aborted or is resumed from a halt varies
        # with the draws, printed above; tests/system/test_ramps*.py cover each for certain.)
        *("ramps", "ramp_pause", "ramp_resume"),
    )
    assert all(COVERAGE[case] for case in every_case), COVERAGE


def test_the_scheduler_matches_the_model(database_url: str) -> None:
    # One fixed sequence of draws, so the coverage required above is met on every run (with
    # random draws it failed about one run in six); the run at length explores new ones.
    _machine_test(database_url, examples=30, steps=40, derandomize=True)


@pytest.mark.soak
def test_the_scheduler_matches_the_model_at_length(database_url: str) -> None:
    _machine_test(database_url, examples=400, steps=80, derandomize=False)
