"""RFC 9457 problem documents: one stable `type` per error, one human `detail`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from aws_lambda_powertools.event_handler import Response

from flag_scheduler.api.auth import Forbidden, Unauthenticated
from flag_scheduler.engine.states import ErrorClass
from flag_scheduler.errors import (
    AmbiguousLocalTime,
    ConfigurationError,
    DatabaseUnavailable,
    FlagExists,
    FlagNotFound,
    IdempotencyKeyReused,
    InvalidScheduleTime,
    NonexistentLocalTime,
    NotFound,
    RampNotFound,
    ScheduleClash,
    ScheduleNotFound,
    StateConflict,
    TooLate,
    TransientDatabaseError,
    UnknownTimeZone,
)

PROBLEM_CONTENT_TYPE = "application/problem+json"
JSON_CONTENT_TYPE = "application/json"
# Problem types are URNs: stable names that resolve nowhere, so no host has to stay up.
TYPE_PREFIX = "urn:flag-scheduler:problem:"

# (status, type slug, title) per error class; the most specific class listed wins.
_BY_CLASS: dict[type[BaseException], tuple[int, str, str]] = {
    Unauthenticated: (401, "unauthenticated", "Not authenticated"),
    Forbidden: (403, "forbidden", "Missing scope"),
    NotFound: (404, "not-found", "Not found"),
    FlagNotFound: (404, "flag-not-found", "No such flag"),
    ScheduleNotFound: (404, "schedule-not-found", "No such schedule"),
    RampNotFound: (404, "ramp-not-found", "No such ramp"),
    StateConflict: (409, "wrong-state", "Conflict with the current state"),
    FlagExists: (409, "flag-exists", "Flag already exists"),
    ScheduleClash: (409, "schedule-clash", "Another change sets this field at this instant"),
    InvalidScheduleTime: (422, "invalid-time", "Time out of range"),
    UnknownTimeZone: (422, "unknown-time-zone", "Unknown time zone"),
    NonexistentLocalTime: (422, "time-in-gap", "Local time in a daylight-saving gap"),
    AmbiguousLocalTime: (422, "ambiguous-time", "Local time is ambiguous"),
    TooLate: (422, "too-late", "Past the lateness limit"),
    IdempotencyKeyReused: (422, "idempotency-key-reused", "Idempotency-Key reused"),
    DatabaseUnavailable: (503, "database-unavailable", "Database unavailable"),
    # A lock or statement timeout (a run holds the row), translated by the store: retry soon.
    TransientDatabaseError: (503, "busy", "Busy"),
    ConfigurationError: (500, "configuration", "The API is misconfigured"),
}

# A 5xx detail is fixed text: the error's own message names hosts, ports, users and secret
# ARNs, which the log keeps and the caller must not see.
_SERVER_DETAIL: dict[str, str] = {
    "database-unavailable": "the database is unavailable",
    "busy": "the schedule is being processed; retry in a moment",
}
INTERNAL_DETAIL = "internal error"


def problem_type(slug: str) -> str:
    return f"{TYPE_PREFIX}{slug}"


def problem_body(status: int, slug: str, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"type": problem_type(slug), "title": title, "status": status, "detail": detail, **extra}


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response[str]:
    return Response(
        status_code=status,
        content_type=PROBLEM_CONTENT_TYPE,
        body=json.dumps(problem_body(status, slug, title, detail, **extra), default=str),
        headers=dict(headers or {}),
    )


def classify(exc: BaseException) -> tuple[int, str, str] | None:
    """(status, slug, title) for a known error, by its nearest listed class."""
    if isinstance(exc, TransientDatabaseError) and exc.error_class == ErrorClass.UNKNOWN:
        # A database error of no class we know (a missing grant, a bug): the engine retries
        # such an error, but a caller told "busy, retry" would retry it forever.
        return None
    for cls in type(exc).__mro__:
        if cls in _BY_CLASS:
            return _BY_CLASS[cls]
    return None


def from_error(exc: BaseException, instance: str | None = None) -> Response[str]:
    """The problem response for one of our errors; an unlisted error is a 500. A 5xx carries
    fixed text and `instance` (the request id the log line has) instead of the message."""
    status, slug, title = classify(exc) or (500, "internal", "Internal error")
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if slug == "busy":
        headers = {"Retry-After": "5"}
    if status < 500:
        return problem_response(status, slug, title, str(exc), headers=headers)
    detail = _SERVER_DETAIL.get(slug, INTERNAL_DETAIL)
    extra = {"instance": instance} if instance else {}
    return problem_response(status, slug, title, detail, headers=headers, **extra)


def validation_problem(errors: Sequence[Mapping[str, Any]]) -> Response[str]:
    """422 naming each bad field (pydantic's error list, as the request validator reports it)."""
    fields = [_field_error(error) for error in errors]
    detail = "; ".join(f"{item['field']}: {item['message']}" for item in fields)
    return problem_response(
        422, "validation-failed", "Invalid request", detail or "invalid request", errors=fields
    )


def _field_error(error: Mapping[str, Any]) -> dict[str, str]:
    """One bad field and its message; a body that is not JSON says where it stops being JSON
    (the validator reports the character position as if it were a field)."""
    loc = error.get("loc", ())
    if error.get("type") == "json_invalid":
        position = loc[1] if len(loc) > 1 else "?"
        reason = str((error.get("ctx") or {}).get("error", "invalid JSON"))
        return {"field": "body", "message": f"is not valid JSON: {reason} at character {position}"}
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return {"field": _location(loc), "message": message}


def unsupported_media_type(declared: str) -> Response[str]:
    """415 for a request body that is not JSON, naming the type it was sent as."""
    shown = declared if len(declared) <= 60 else f"{declared[:57]}..."
    detail = f"the body must be JSON (Content-Type: {JSON_CONTENT_TYPE}), not {shown!r}"
    if shown.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
        detail += "; curl -d sends a form unless given -H 'Content-Type: application/json'"
    return problem_response(415, "unsupported-media-type", "Unsupported media type", detail)


def invalid_ramp(mistakes: Sequence[str], fields: Sequence[str]) -> Response[str]:
    """422 naming each mistake of a ramp the ramp rules refused, and where in the body it is
    (`body.stages.1`, `body.rollout.1`, `body.guard_alarms`, ...)."""
    errors = [
        {"field": f"body.{field}", "message": mistake}
        for field, mistake in zip(fields, mistakes, strict=True)
    ]
    return problem_response(422, "invalid-ramp", "Invalid ramp", "; ".join(mistakes), errors=errors)


def _location(loc: Sequence[Any]) -> str:
    """`body.updates.enabled`, `query.limit`, `path.schedule_id`, `header.idempotency-key`;
    without the labels pydantic gives union members (`tag:local`, `function-before[...]`)."""
    parts = [str(part) for part in loc]
    kept = [part for part in parts if not part.startswith("tag:") and "[" not in part]
    return ".".join(kept) or "request"
