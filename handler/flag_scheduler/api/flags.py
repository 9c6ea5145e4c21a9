"""Routes under /flags: list, create and show flags; schedule changes; the timeline."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Header, Path, Query
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from flag_scheduler.api import request, runtime, views
from flag_scheduler.api.models import (
    Environment,
    FlagDetailOut,
    FlagIn,
    FlagOut,
    FlagsOut,
    LocalTimeIn,
    ScheduleCreatedOut,
    ScheduleIn,
    ScheduleOut,
    SchedulePageOut,
    TimelineOut,
    parse_rfc3339,
    responses,
)
from flag_scheduler.api.schedules import PageLimit, StatusFilter, parse_statuses
from flag_scheduler.engine import limits
from flag_scheduler.engine.creation_checks import LocalTime, resolve_local
from flag_scheduler.engine.timeline import timeline
from flag_scheduler.store.api_catalog import IdempotencyKey, NewSchedule, ScheduleFilter

router = APIGatewayHttpRouter()  # type: ignore[no-untyped-call]

EnvironmentQuery = Annotated[Environment, Query(description="Default: production")]
FlagKeyPath = Annotated[
    str, Path(pattern=f"^{limits.FLAG_KEY_PATTERN}$", description=limits.FLAG_KEY_RULE)
]
IdempotencyHeader = Annotated[
    str | None,
    Header(
        pattern=r"^[\x21-\x7e]{1,255}$",
        description="Makes a retried request return the schedule the first one created",
    ),
]


@router.get("/flags", summary="Every flag", responses=responses(FlagsOut))
def list_flags(environment: Annotated[Environment | None, Query()] = None) -> FlagsOut:
    flags = request.catalog().flags(environment)
    return FlagsOut(items=[FlagOut.of(flag) for flag in flags])


@router.post(
    "/flags",
    summary="Create a flag",
    status_code=201,
    responses=responses(FlagOut, 409, status=201, description="Created"),
)
def create_flag(flag: FlagIn) -> FlagOut:
    created = request.catalog().create_flag_by(
        flag.flag_key,
        environment=flag.environment,
        enabled=flag.enabled,
        rollout_percentage=flag.rollout_percentage,
        description=flag.description,
        actor=request.caller().actor,
    )
    return FlagOut.of(created)


@router.get(
    "/flags/<flag_key>",
    summary="A flag with its pending and recent schedules",
    responses=responses(FlagDetailOut, 404),
)
def get_flag(flag_key: FlagKeyPath, environment: EnvironmentQuery = "production") -> FlagDetailOut:
    catalog = request.catalog()
    flag = catalog.get_flag(flag_key, environment)
    pending = catalog.schedules(
        statuses=["pending", "waiting_for_retry"], flag_key=flag_key, environment=environment
    )
    return FlagDetailOut(
        **FlagOut.of(flag).model_dump(),
        pending=[ScheduleOut.of(s) for s in pending],
        recent=[ScheduleOut.of(s) for s in catalog.recent_schedules(flag)],
    )


def moment(scheduled_at: datetime | LocalTimeIn, field: str = "body.scheduled_at") -> datetime:
    """The UTC moment of an RFC 3339 time or of a local time in a zone (`field` names it
    in a problem)."""
    if isinstance(scheduled_at, datetime):
        return scheduled_at
    offset = None
    if scheduled_at.offset is not None:
        text = scheduled_at.offset.upper()
        sign = -1 if text.startswith("-") else 1
        offset = (
            timedelta(0)
            if text == "Z"
            else sign * timedelta(hours=int(text[1:3]), minutes=int(text[4:6]))
        )
    try:
        local = datetime.fromisoformat(scheduled_at.local)
    except ValueError:
        raise request.BadParameter(
            f"{field}.local", f"{scheduled_at.local!r} is not a real date and time"
        ) from None
    spec = LocalTime(local, scheduled_at.time_zone, fold=scheduled_at.fold, offset=offset)
    return resolve_local(spec)


@router.post(
    "/flags/<flag_key>/schedules",
    summary="Schedule a change of a flag",
    status_code=201,
    responses=responses(ScheduleCreatedOut, 404, 409, status=201, description="Created"),
)
def create_schedule(
    flag_key: FlagKeyPath,
    schedule: ScheduleIn,
    environment: EnvironmentQuery = "production",
    idempotency_key: IdempotencyHeader = None,
) -> Response[ScheduleCreatedOut]:
    caller = request.caller()
    catalog = request.catalog()
    flag = catalog.get_flag(flag_key, environment)
    key = None
    if idempotency_key is not None:
        digest = request.request_hash(flag_key, environment, schedule.model_dump(mode="json"))
        key = IdempotencyKey(actor=caller.subject, key=idempotency_key, request_hash=digest)
    settings = runtime.settings()
    new = NewSchedule(
        flag=flag,
        scheduled_at=moment(schedule.scheduled_at),
        updates=schedule.updates,
        max_retries=schedule.max_retries,
        actor=caller.actor,
    )
    result = catalog.schedule_checked(
        new,
        now=runtime.now(),
        max_lateness_seconds=settings.max_lateness_seconds,
        idempotency=key,
    )
    headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
    return Response(
        201, body=views.created(result), content_type="application/json", headers=headers
    )


@router.get(
    "/flags/<flag_key>/schedules",
    summary="A flag's schedules, a page at a time",
    responses=responses(SchedulePageOut, 404),
)
def list_flag_schedules(
    flag_key: FlagKeyPath,
    environment: EnvironmentQuery = "production",
    status: StatusFilter = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: PageLimit = 100,
) -> SchedulePageOut:
    catalog = request.catalog()
    catalog.get_flag(flag_key, environment)
    where = ScheduleFilter(
        statuses=parse_statuses(status), flag_key=flag_key, environment=environment
    )
    after = request.decode_cursor(cursor) if cursor else None
    return views.page(catalog.schedules_page(where, after=after, limit=limit + 1), limit)


@router.get(
    "/flags/<flag_key>/timeline",
    summary="The flag's value after each pending change, in order",
    responses=responses(TimelineOut, 404),
)
def get_timeline(
    flag_key: FlagKeyPath,
    environment: EnvironmentQuery = "production",
    until: Annotated[
        str | None, Query(description="RFC 3339; default: every pending change")
    ] = None,
) -> TimelineOut:
    limit = _until(until)
    catalog = request.catalog()
    flag = catalog.get_flag(flag_key, environment)
    plan = catalog.plan(flag)
    now = runtime.now()
    lateness = runtime.settings().max_lateness_seconds
    steps = timeline(plan, now=now, max_lateness_seconds=lateness, until=limit)
    return TimelineOut(
        flag_key=flag.flag_key,
        environment=flag.environment,
        now=now,
        until=limit,
        current=dict(plan.current),
        steps=[views.step(s) for s in steps],
        value_at_until=steps[-1].after if steps else dict(plan.current),
    )


def _until(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise request.BadParameter("query.until", str(exc)) from None
