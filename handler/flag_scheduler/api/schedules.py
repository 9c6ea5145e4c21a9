"""Routes under /schedules: list, show, cancel, retry (one or in bulk), preview."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from flag_scheduler.api import request, runtime, views
from flag_scheduler.api.models import (
    BulkRetryIn,
    BulkRetryOut,
    Environment,
    FlagKey,
    PreviewOut,
    ScheduleDetailOut,
    ScheduleOut,
    SchedulePageOut,
    responses,
)
from flag_scheduler.engine.states import State, Status
from flag_scheduler.store.api_catalog import RequeueFilter, ScheduleFilter

router = APIGatewayHttpRouter()  # type: ignore[no-untyped-call]

# Every state the CLI shows, and the stored status `failed` (all three failed states).
STATUS_VALUES = tuple(dict.fromkeys([*State, *Status]))
StatusFilter = Annotated[
    str | None,
    Query(
        max_length=500,
        description="Comma-separated: " + ", ".join(STATUS_VALUES),
    ),
]
PageLimit = Annotated[int, Query(ge=1, le=1000)]


def parse_statuses(text: str | None) -> list[str] | None:
    """The states named in a comma-separated `status` query parameter."""
    return request.choices_in(text, "query.status", STATUS_VALUES)


@router.get(
    "/schedules", summary="Schedules, a page at a time", responses=responses(SchedulePageOut)
)
def list_schedules(
    status: StatusFilter = None,
    flag_key: Annotated[FlagKey | None, Query()] = None,
    environment: Annotated[Environment | None, Query()] = None,
    due: Annotated[bool, Query(description="Only schedules due now")] = False,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: PageLimit = 100,
) -> SchedulePageOut:
    where = ScheduleFilter(
        statuses=parse_statuses(status),
        flag_key=flag_key,
        environment=environment,
        due_at=runtime.now() if due else None,
    )
    after = request.decode_cursor(cursor) if cursor else None
    rows = request.catalog().schedules_page(where, after=after, limit=limit + 1)
    return views.page(rows, limit)


@router.post(
    "/schedules/retry",
    summary="Retry every permanently failed schedule matching a filter",
    responses=responses(BulkRetryOut),
)
def bulk_retry(retry: BulkRetryIn) -> BulkRetryOut:
    chosen = retry.filter
    where = RequeueFilter(
        expired=None if chosen.state is None else chosen.state == "expired",
        flag_key=chosen.flag_key,
        environment=chosen.environment,
        error_class=chosen.error_class,
        failed_since=chosen.failed_since,
        failed_before=chosen.failed_before,
    )
    schedules = request.catalog().requeue_matching(
        where,
        limit=retry.limit,
        dry_run=retry.dry_run,
        now=runtime.now(),
        actor=request.caller().actor,
    )
    return BulkRetryOut(
        dry_run=retry.dry_run,
        count=len(schedules),
        items=[ScheduleOut.of(s) for s in schedules],
    )


@router.get(
    "/schedules/<schedule_id>",
    summary="A schedule: state, attempt history, upcoming attempts",
    responses=responses(ScheduleDetailOut, 404),
)
def get_schedule(schedule_id: UUID) -> ScheduleDetailOut:
    catalog = request.catalog()
    schedule = catalog.get_schedule(schedule_id)
    return views.detail(schedule, catalog.history_with_actor(schedule_id), runtime.now())


@router.post(
    "/schedules/<schedule_id>/cancel",
    summary="Cancel a pending or waiting schedule",
    responses=responses(ScheduleOut, 404, 409),
)
def cancel_schedule(schedule_id: UUID) -> ScheduleOut:
    schedule = request.catalog().cancel(
        schedule_id, now=runtime.now(), actor=request.caller().actor
    )
    return ScheduleOut.of(schedule)


@router.post(
    "/schedules/<schedule_id>/retry",
    summary="Retry a permanently failed or expired schedule now",
    responses=responses(ScheduleOut, 404, 409),
)
def retry_schedule(schedule_id: UUID) -> ScheduleOut:
    schedule = request.catalog().requeue(
        schedule_id, now=runtime.now(), actor=request.caller().actor
    )
    return ScheduleOut.of(schedule)


@router.get(
    "/schedules/<schedule_id>/preview",
    summary="The attempts still to come, at their jittered times",
    responses=responses(PreviewOut, 404),
)
def preview_schedule(schedule_id: UUID) -> PreviewOut:
    schedule = request.catalog().get_schedule(schedule_id)
    return PreviewOut(
        schedule_id=schedule.id,
        state=schedule.state,
        policy=views.policy(schedule),
        upcoming=views.upcoming(schedule, runtime.now()),
    )
