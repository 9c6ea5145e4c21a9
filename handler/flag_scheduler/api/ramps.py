"""Routes for ramps: create one on a flag, list, show, pause, resume, abort (the store's
Ramps does each in one transaction with its history row, the actor being the caller)."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Query
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from flag_scheduler.api import request, runtime
from flag_scheduler.api.flags import EnvironmentQuery, FlagKeyPath, moment
from flag_scheduler.api.models import Environment, FlagKey, responses
from flag_scheduler.api.ramp_models import (
    AbortedOut,
    AbortIn,
    PausedOut,
    RampCreatedOut,
    RampDetailOut,
    RampIn,
    RampOut,
    RampsOut,
    ResumedOut,
)
from flag_scheduler.api.schedules import PageLimit
from flag_scheduler.engine.creation_checks import refuse_late_start
from flag_scheduler.engine.ramp_rules import InvalidRamp, check_ramp
from flag_scheduler.engine.states import RampState
from flag_scheduler.store.ramps import Ramps

router = APIGatewayHttpRouter()  # type: ignore[no-untyped-call]

RAMP_STATES = tuple(RampState)
RampStateFilter = Annotated[
    str | None,
    Query(max_length=500, description="Comma-separated: " + ", ".join(RAMP_STATES)),
]


def ramps() -> Ramps:
    return Ramps(runtime.connection(), timeouts=request.write_timeouts())


def parse_states(text: str | None) -> list[str] | None:
    """The ramp states named in a comma-separated `state` query parameter."""
    return request.choices_in(text, "query.state", RAMP_STATES)


def stage_documents(ramp: RampIn) -> list[Any]:
    """The stages as the ramp rules check them: given, or one per rollout percentage.

    Raises:
        InvalidRamp: both forms given, or neither, or a rollout list without its hold.
    """
    if ramp.stages is not None:
        if ramp.rollout is not None or ramp.hold_seconds is not None or ramp.enable:
            raise InvalidRamp(["give stages, or rollout with hold_seconds (and enable), not both"])
        return [stage.model_dump() for stage in ramp.stages]
    if ramp.rollout is None or ramp.hold_seconds is None:
        raise InvalidRamp(["give stages, or rollout with hold_seconds"])
    documents: list[Any] = []
    for number, rollout in enumerate(ramp.rollout):
        updates: dict[str, Any] = {"rollout_percentage": rollout}
        if ramp.enable and number == 0:
            updates = {"enabled": True, **updates}
        documents.append({"updates": updates, "hold_seconds": ramp.hold_seconds})
    return documents


def rollout_fields(refused: InvalidRamp) -> list[str]:
    """Where each mistake lies in a ramp given as `rollout` with one `hold_seconds` (the
    rules, which see one stage per rollout, say `stages.N`)."""
    found: list[str] = []
    for field, problem in zip(refused.fields, refused.problems, strict=True):
        if field.startswith("stages"):
            field = "hold_seconds" if " hold" in problem else field.replace("stages", "rollout")
        found.append(field)
    return found


@router.post(
    "/flags/<flag_key>/ramps",
    summary="Start a gradual rollout of a flag: stages, each held before the next",
    status_code=201,
    responses=responses(RampCreatedOut, 404, 409, status=201, description="Created"),
)
def create_ramp(
    flag_key: FlagKeyPath, ramp: RampIn, environment: EnvironmentQuery = "production"
) -> Response[RampCreatedOut]:
    caller = request.caller()
    flag = request.catalog().get_flag(flag_key, environment)
    now = runtime.now()
    start = now if ramp.starts_at is None else moment(ramp.starts_at, "body.starts_at")
    lateness = runtime.settings().max_lateness_seconds
    refuse_late_start(start, now=now, max_lateness_seconds=lateness, name="starts_at")
    try:
        checked = check_ramp(
            stage_documents(ramp),
            flag={"enabled": flag.enabled, "rollout_percentage": flag.rollout_percentage},
            start=start,
            end_updates=ramp.end_updates,
            guard_alarms=ramp.guard_alarms,
            rollback_on_alarm=ramp.rollback_on_alarm,
        )
    except InvalidRamp as refused:
        if ramp.stages is not None:
            raise
        raise InvalidRamp(refused.problems, rollout_fields(refused)) from None
    created = ramps().create(
        flag,
        checked,
        start=start,
        guard_alarms=ramp.guard_alarms,
        rollback_on_alarm=ramp.rollback_on_alarm,
        insufficient_data=ramp.insufficient_data,
        now=now,
        actor=caller.actor,
    )
    body = RampCreatedOut(ramp=RampOut.of(created), warnings=list(checked.warnings))
    return Response(201, body=body, content_type="application/json")


@router.get(
    "/ramps", summary="Ramps, newest first, a page at a time", responses=responses(RampsOut)
)
def list_ramps(
    state: RampStateFilter = None,
    flag_key: Annotated[FlagKey | None, Query()] = None,
    environment: Annotated[Environment | None, Query()] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: PageLimit = 100,
) -> RampsOut:
    found = ramps().list_ramps(
        flag_key=flag_key,
        environment=environment,
        states=parse_states(state),
        after=request.decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    shown = found[:limit]
    # The extra row only says there is a next page.
    more = len(found) > limit and shown
    after = request.encode_cursor(shown[-1].created_at, shown[-1].id) if more else None
    return RampsOut(items=[RampOut.of(ramp) for ramp in shown], next_cursor=after)


@router.get(
    "/ramps/<ramp_id>",
    summary="A ramp: its stages' schedules with their states and times, its history",
    responses=responses(RampDetailOut, 404),
)
def get_ramp(ramp_id: UUID) -> RampDetailOut:
    return RampDetailOut.of(ramps().show(ramp_id))


@router.post(
    "/ramps/<ramp_id>/pause",
    summary="Pause an active ramp: its pending stage does not run, its hold clock stops",
    responses=responses(PausedOut, 404, 409),
)
def pause_ramp(ramp_id: UUID) -> PausedOut:
    ramp = ramps().pause(ramp_id, now=runtime.now(), actor=request.caller().actor)
    return PausedOut(ramp=RampOut.of(ramp))


@router.post(
    "/ramps/<ramp_id>/resume",
    summary="Resume a paused ramp (the rest of its hold) or a halted one (its stage requeued)",
    responses=responses(ResumedOut, 404, 409),
)
def resume_ramp(ramp_id: UUID) -> ResumedOut:
    resumed = ramps().resume(ramp_id, now=runtime.now(), actor=request.caller().actor)
    return ResumedOut(
        ramp=RampOut.of(resumed.ramp),
        stage=resumed.stage,
        schedule_id=resumed.schedule_id,
        due_at=resumed.due_at,
    )


@router.post(
    "/ramps/<ramp_id>/abort",
    summary="Abort an unfinished ramp; with rollback, schedule the value before it, due now",
    responses=responses(AbortedOut, 404, 409),
)
def abort_ramp(ramp_id: UUID, abort: Annotated[AbortIn | None, Body()] = None) -> AbortedOut:
    rollback = abort is not None and abort.rollback
    ramp, rollback_id = ramps().abort(
        ramp_id, now=runtime.now(), actor=request.caller().actor, rollback=rollback
    )
    return AbortedOut(ramp=RampOut.of(ramp), rollback_schedule_id=rollback_id)
