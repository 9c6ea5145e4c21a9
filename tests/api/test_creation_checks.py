"""The creation-time checks (engine/creation_checks.py, engine/timeline.py): pure, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from flag_scheduler.engine.creation_checks import (
    LocalTime,
    RampInProgress,
    check_change,
    check_time,
    resolve_local,
    unscheduled_fields,
)
from flag_scheduler.engine.timeline import FlagPlan, PendingChange, timeline, value_at
from flag_scheduler.errors import (
    AmbiguousLocalTime,
    InvalidScheduleTime,
    NonexistentLocalTime,
    ScheduleClash,
    TooLate,
    UnknownTimeZone,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
A, B, C = UUID(int=1), UUID(int=2), UUID(int=3)
DAY = 86_400


def _change(id_: UUID, at: datetime, **fields: bool | int) -> PendingChange:
    return PendingChange(id_, at, fields, at, at)


@pytest.mark.parametrize(
    ("local", "zone", "fold", "offset", "expected"),
    [
        # An ordinary winter time in Berlin: UTC+1.
        ("2026-12-24T09:00", "Europe/Berlin", None, None, "2026-12-24T08:00:00+00:00"),
        # Summer: UTC+2.
        ("2026-07-01T09:00", "Europe/Berlin", None, None, "2026-07-01T07:00:00+00:00"),
        # The overlap of 2026-10-25 (02:00-03:00 twice), chosen by fold ...
        ("2026-10-25T02:30", "Europe/Berlin", 0, None, "2026-10-25T00:30:00+00:00"),
        ("2026-10-25T02:30", "Europe/Berlin", 1, None, "2026-10-25T01:30:00+00:00"),
        # ... or by offset.
        ("2026-10-25T02:30", "Europe/Berlin", None, 1, "2026-10-25T01:30:00+00:00"),
        # New York's overlap, the other side of the Atlantic (-04:00 then -05:00).
        ("2026-11-01T01:30", "America/New_York", 1, None, "2026-11-01T06:30:00+00:00"),
        ("2026-06-01T00:00", "UTC", None, None, "2026-06-01T00:00:00+00:00"),
    ],
)
def test_local_times_resolve_to_utc(
    local: str, zone: str, fold: int | None, offset: int | None, expected: str
) -> None:
    spec = LocalTime(
        datetime.fromisoformat(local),
        zone,
        fold=fold,
        offset=None if offset is None else timedelta(hours=offset),
    )
    assert resolve_local(spec).isoformat() == expected


def test_gap_is_refused_naming_it() -> None:
    spec = LocalTime(datetime(2026, 3, 29, 2, 30), "Europe/Berlin")
    with pytest.raises(NonexistentLocalTime) as caught:
        resolve_local(spec)
    assert str(caught.value) == (
        "2026-03-29T02:30 does not exist in Europe/Berlin: clocks jump from 2026-03-29T02:00 to"
        " 2026-03-29T03:00 (UTC+01:00 to UTC+02:00, at 2026-03-29T01:00:00Z); choose a time"
        " outside that gap"
    )


def test_gap_is_refused_even_with_fold() -> None:
    with pytest.raises(NonexistentLocalTime, match="2026-03-08T02:00 to 2026-03-08T03:00"):
        resolve_local(LocalTime(datetime(2026, 3, 8, 2, 15), "America/New_York", fold=1))


def test_overlap_without_a_choice_names_both_moments() -> None:
    with pytest.raises(AmbiguousLocalTime) as caught:
        resolve_local(LocalTime(datetime(2026, 10, 25, 2, 30), "Europe/Berlin"))
    assert "2026-10-25T00:30:00Z (UTC+02:00, fold 0)" in str(caught.value)
    assert "2026-10-25T01:30:00Z (UTC+01:00, fold 1)" in str(caught.value)


def test_offset_the_time_never_has_is_refused() -> None:
    spec = LocalTime(datetime(2026, 12, 24, 9), "Europe/Berlin", offset=timedelta(hours=5))
    with pytest.raises(AmbiguousLocalTime, match="never at offset UTC\\+05:00"):
        resolve_local(spec)


@pytest.mark.parametrize(
    "zone",
    [
        "Mars/Olympus",
        "../../etc/passwd",
        "",
        "Europe/Berlin\x00",
        "x" * 500,
        "/etc/hosts",
        # Files of the zone database that are no zone: the host's own zone, and leftovers.
        "localtime",
        "posixrules",
        "Factory",
    ],
)
def test_unknown_zones_are_refused(zone: str) -> None:
    with pytest.raises(UnknownTimeZone, match="not an IANA time zone name"):
        resolve_local(LocalTime(datetime(2026, 12, 24, 9), zone))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        # a typo: two examples of a name
        (
            "Europe/Berlim",
            "time_zone 'Europe/Berlim' is not an IANA time zone name (e.g. Europe/Berlin, UTC)",
        ),
        # only the case differs: the zone meant, in one line
        (
            "europe/berlin",
            "time_zone 'europe/berlin' is not an IANA time zone name; did you mean"
            " Europe/Berlin? (case matters)",
        ),
        ("utc", "time_zone 'utc' is not an IANA time zone name; did you mean UTC? (case matters)"),
        # not a zone in any case
        ("LOCALTIME", "time_zone 'LOCALTIME' is not an IANA time zone name (e.g. Europe/"),
    ],
)
def test_an_unknown_zone_is_named_with_the_zone_meant(name: str, message: str) -> None:
    with pytest.raises(UnknownTimeZone) as raised:
        resolve_local(LocalTime(datetime(2026, 12, 24, 9), name))
    assert str(raised.value).startswith(message)


def test_local_with_its_own_offset_is_refused() -> None:
    with pytest.raises(InvalidScheduleTime, match="without an offset"):
        resolve_local(LocalTime(datetime(2026, 12, 24, 9, tzinfo=UTC), "Europe/Berlin"))


def test_lateness() -> None:
    assert check_time(NOW + timedelta(hours=1), now=NOW, max_lateness_seconds=DAY) == []
    [note] = check_time(NOW - timedelta(hours=1), now=NOW, max_lateness_seconds=DAY)
    assert note.code == "applies_at_next_run"
    assert "3600 s in the past" in note.detail
    with pytest.raises(TooLate, match="beyond the lateness limit of 86400 s"):
        check_time(NOW - timedelta(days=2), now=NOW, max_lateness_seconds=DAY)
    # The limit off: any past time is accepted, with the note.
    assert check_time(NOW - timedelta(days=900), now=NOW, max_lateness_seconds=0)
    with pytest.raises(InvalidScheduleTime, match="outside the range"):
        check_time(datetime(9999, 12, 31, 1, tzinfo=UTC), now=NOW, max_lateness_seconds=0)


PLAN = FlagPlan(current={"enabled": False, "rollout_percentage": 0}, last_set={})


def _check(plan: FlagPlan, at: datetime, **fields: bool | int) -> list[tuple[str, UUID | None]]:
    notices = check_change(plan, scheduled_at=at, fields=fields, now=NOW, max_lateness_seconds=DAY)
    return [(n.code, n.schedule_id) for n in notices]


def test_same_field_same_instant_clashes() -> None:
    at = NOW + timedelta(hours=1)
    plan = FlagPlan(PLAN.current, {}, (_change(A, at, enabled=True),))
    with pytest.raises(ScheduleClash, match=f"schedule {A} already sets enabled"):
        _check(plan, at, enabled=False, rollout_percentage=5)
    # Another field at the same instant is no clash.
    assert _check(plan, at, rollout_percentage=5) == []


def test_same_fields_before_and_after_warn() -> None:
    at = NOW + timedelta(hours=2)
    plan = FlagPlan(
        PLAN.current,
        {},
        (
            _change(A, at - timedelta(hours=1), enabled=True),
            _change(B, at + timedelta(hours=1), enabled=False),
            _change(C, at + timedelta(hours=1), rollout_percentage=3),
        ),
    )
    assert _check(plan, at, enabled=False, rollout_percentage=50) == [
        ("overrides_earlier", A),
        ("overridden_later", B),
        ("overridden_later", C),
    ]


def test_change_that_sets_nothing_new_warns() -> None:
    at = NOW + timedelta(hours=2)
    assert _check(PLAN, at, enabled=False) == [("no_change", None)]
    # Not a no-op once an earlier pending change turns the flag on.
    plan = FlagPlan(PLAN.current, {}, (_change(A, at - timedelta(hours=1), enabled=True),))
    assert _check(plan, at, enabled=False) == [("overrides_earlier", A)]
    assert _check(plan, at, enabled=True) == [("overrides_earlier", A), ("no_change", None)]


def test_past_change_behind_an_applied_later_one_is_superseded() -> None:
    applied_at = NOW - timedelta(minutes=5)
    plan = FlagPlan(PLAN.current, {"enabled": (applied_at, A)})
    codes = _check(plan, NOW - timedelta(minutes=10), enabled=True)
    assert codes == [("already_superseded", None), ("no_change", None)]


def test_timeline_follows_the_per_field_rule() -> None:
    # A (09:00, waiting for a retry at 09:30) and B (09:10) both set enabled: B applies first,
    # and A's retry leaves enabled alone (B was scheduled after it) but sets rollout.
    nine = datetime(2026, 12, 2, 9, tzinfo=UTC)
    a = PendingChange(
        A, nine, {"enabled": True, "rollout_percentage": 10}, nine.replace(minute=30), nine
    )
    b = _change(B, nine.replace(minute=10), enabled=False)
    plan = FlagPlan(PLAN.current, {}, (a, b))
    steps = timeline(plan, now=NOW, max_lateness_seconds=DAY)
    assert [(s.change.id, s.sets, s.stale) for s in steps] == [
        (B, {"enabled": False}, ()),
        (A, {"rollout_percentage": 10}, ("enabled",)),
    ]
    assert steps[-1].after == {"enabled": False, "rollout_percentage": 10}
    assert value_at(plan, nine.replace(minute=20), now=NOW, max_lateness_seconds=DAY) == {
        "enabled": False,
        "rollout_percentage": 0,
    }


def test_timeline_marks_changes_that_would_expire() -> None:
    old = NOW - timedelta(days=2)
    plan = FlagPlan(PLAN.current, {}, (_change(A, old, enabled=True),))
    [step] = timeline(plan, now=NOW, max_lateness_seconds=DAY)
    assert step.expires
    assert step.at == NOW
    assert step.after == PLAN.current


def test_a_late_time_that_expires_before_the_next_run_is_flagged() -> None:
    [note] = check_time(NOW - timedelta(seconds=DAY - 1), now=NOW, max_lateness_seconds=DAY)
    assert note.code == "will_expire"
    assert "expires at 2026-12-01T12:00:01Z" in note.detail
    # A minute's run interval left before the expiry: it is applied first.
    [note] = check_time(NOW - timedelta(seconds=DAY - 60), now=NOW, max_lateness_seconds=DAY)
    assert note.code == "applies_at_next_run"


STAGES = [{"rollout_percentage": 5}, {"rollout_percentage": 50}, {"enabled": True}]


@pytest.mark.parametrize(
    ("state", "current_stage", "expected"),
    [
        # Active: its current stage is live (pending), only the later ones are to come.
        ("active", 0, {"rollout_percentage", "enabled"}),
        ("active", 1, {"enabled"}),
        ("active", 2, set()),
        # Paused or halted: resuming schedules the current stage anew.
        ("paused", 2, {"enabled"}),
        ("halted", 1, {"rollout_percentage", "enabled"}),
    ],
)
def test_a_ramps_unscheduled_fields(state: str, current_stage: int, expected: set[str]) -> None:
    assert unscheduled_fields(state, current_stage, STAGES) == expected


def test_a_change_of_a_field_a_ramp_has_yet_to_schedule_warns_naming_the_ramp() -> None:
    plan = FlagPlan({"enabled": False, "rollout_percentage": 0}, {})
    ramp = RampInProgress(A, "active", 1, frozenset({"rollout_percentage"}))
    at = NOW + timedelta(hours=1)
    (notice,) = check_change(
        plan,
        scheduled_at=at,
        fields={"rollout_percentage": 0, "enabled": True},
        now=NOW,
        max_lateness_seconds=DAY,
        ramp=ramp,
    )
    assert notice.code == "ramp_overrides_later"
    assert notice.detail.startswith(f"ramp {A} (active, at stage 1) sets rollout_percentage in")
    assert (
        check_change(
            plan,
            scheduled_at=at,
            fields={"enabled": True},
            now=NOW,
            max_lateness_seconds=DAY,
            ramp=ramp,
        )
        == []
    )
