"""The HTTP API's Lambda entry: one Powertools resolver for every route, scopes checked first.

Contract (other front doors build on it):

- `app` is an `APIGatewayHttpResolver(enable_validation=True)` whose OpenAPI title is
  "flag-scheduler"; `openapi_document()` is the generated document (docs/openapi.json holds
  a committed copy); `lambda_handler(event, context)` resolves one API Gateway HTTP API
  (payload v2) event. `app.resolve(event, context)` behaves the same (the scope check runs in
  it), so a local server may call either.
- Database: the scheduler's environment. DATABASE_URL locally; in AWS the RDS-format secret
  (DB_SECRET_ARN, DB_HOST, DB_NAME) through aws/secrets.connect_database. Connected on the
  first request that needs it and cached (one connection per thread; renewed when broken or
  older than FLAG_SCHEDULE_CONNECTION_MAX_AGE_SECONDS).
- Auth: API Gateway's JWT authorizer verifies the token; the function reads its context,
  `requestContext.authorizer.jwt.claims` and `.scopes`, plus the space-separated scope claim
  (FLAG_SCHEDULER_API_SCOPE_CLAIM, default `scope`; "[a b]" array renderings are read too).
  GET/HEAD/OPTIONS need FLAG_SCHEDULER_API_READ_SCOPE (default `flags:read`), every other
  method FLAG_SCHEDULER_API_WRITE_SCOPE (default `flags:write`). No claims: 401; a token
  without the scope: 403, before any validation. `GET /openapi.json` needs no scope.
- The actor recorded in history rows is the first present claim of
  FLAG_SCHEDULER_API_ACTOR_CLAIMS (comma-separated, default `email,sub`).
- Errors are RFC 9457 `application/problem+json` documents (api/problems.py): `type`
  (`urn:flag-scheduler:problem:<slug>`), `title`, `status`, `detail`; validation errors
  (422, `validation-failed`) add `errors: [{field, message}]` naming each bad field.
- Tests replace the clock with `runtime.set_clock` and forget cached state with
  `runtime.reset()`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import psycopg
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer

from flag_scheduler import __version__
from flag_scheduler.api import flags, problems, ramps, request, runtime, schedules
from flag_scheduler.api.auth import Forbidden, Unauthenticated, authorize
from flag_scheduler.api.models import StatusOut, responses
from flag_scheduler.engine.ramp_rules import InvalidRamp
from flag_scheduler.errors import FlagSchedulerError

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = logging.getLogger(__name__)

JSON = problems.JSON_CONTENT_TYPE

OPENAPI_TITLE = "flag-scheduler"
# Paths any caller may read: the API's own description holds no data.
PUBLIC_PATHS = frozenset({"/openapi.json"})


class ScopedResolver(APIGatewayHttpResolver):
    """The HTTP API resolver that checks the caller's scope before routing or validating, so
    a caller without the scope learns nothing about what a valid request looks like."""

    def resolve(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        if event.get("rawPath") in PUBLIC_PATHS:
            return super().resolve(event, context)
        try:
            authorize(event, runtime.settings())
        except (Unauthenticated, Forbidden) as exc:
            return _raw_problem(exc, context)
        except FlagSchedulerError as exc:  # the settings: a misconfigured function
            logger.error(
                "request_failed", extra={"error_class": type(exc).__name__, "error": str(exc)}
            )
            return _raw_problem(exc, context)
        declared = _content_type(event)
        if event.get("body") and declared.split(";", 1)[0].strip() not in ("", JSON):
            # Every operation takes JSON; the validator would read a form (what `curl -d`
            # sends) as field names, and fail on any other type.
            return _raw_response(problems.unsupported_media_type(declared))
        if declared.startswith(JSON):
            # Media types are case-insensitive; the validator only reads this spelling.
            event = {**event, "headers": {**event["headers"], "content-type": declared}}
        return super().resolve(event, context)


def _content_type(event: Mapping[str, Any]) -> str:
    """The request's Content-Type, lower case ("" when it has none)."""
    headers = event.get("headers") or {}
    found = (str(value) for name, value in headers.items() if str(name).lower() == "content-type")
    return next(found, "").strip().lower()


def _raw_problem(exc: Exception, context: Any) -> dict[str, Any]:
    """A payload-v2 response for a request refused before the resolver saw it (the same
    problem document the resolver's error handlers send)."""
    return _raw_response(
        problems.from_error(exc, instance=getattr(context, "aws_request_id", None))
    )


def _raw_response(response: Response[str]) -> dict[str, Any]:
    return {
        "statusCode": response.status_code,
        "headers": {"Content-Type": problems.PROBLEM_CONTENT_TYPE, **response.headers},
        "cookies": [],
        "body": response.body,
        "isBase64Encoded": False,
    }


app = ScopedResolver(enable_validation=True)
OPENAPI_SETTINGS: dict[str, Any] = {
    "title": OPENAPI_TITLE,
    "version": __version__,
    "description": (
        "Schedule feature-flag changes; see the README's HTTP API section. Every operation"
        " takes a bearer JWT: reads need the scope flags:read, writes flags:write."
    ),
    "security_schemes": {"bearer": HTTPBearer(bearerFormat="JWT")},
    "security": [{"bearer": []}],
}
app.configure_openapi(**OPENAPI_SETTINGS)
app.include_router(flags.router)
app.include_router(schedules.router)
app.include_router(ramps.router)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document the resolver generates (docs/openapi.json is a copy)."""
    document: dict[str, Any] = json.loads(app.get_openapi_json_schema(**OPENAPI_SETTINGS))
    return document


# Powertools' exception_handler is untyped.
@app.exception_handler(RequestValidationError)  # type: ignore[untyped-decorator]
def _invalid_request(exc: RequestValidationError) -> Response[str]:
    return problems.validation_problem(exc.errors())


@app.exception_handler(RequestUnsupportedContentType)  # type: ignore[untyped-decorator]
def _unsupported_content_type(exc: RequestUnsupportedContentType) -> Response[str]:
    """A JSON type the validator does not take (its check is case-sensitive)."""
    return problems.unsupported_media_type(app.current_event.headers.get("content-type", ""))


@app.exception_handler(FlagSchedulerError)  # type: ignore[untyped-decorator]
def _our_error(exc: FlagSchedulerError) -> Response[str]:
    if isinstance(exc, request.BadParameter):
        return problems.validation_problem([{"loc": exc.field.split("."), "msg": exc.message}])
    if isinstance(exc, InvalidRamp):
        return problems.invalid_ramp(exc.problems, exc.fields)
    response = problems.from_error(exc, instance=_lambda_request_id())
    if response.status_code >= 500:
        logger.error("request_failed", extra={"error_class": type(exc).__name__, "error": str(exc)})
    return response


def _lambda_request_id() -> str | None:
    """The invocation's id, which every log line of it carries: a 5xx names it as `instance`."""
    return getattr(app.lambda_context, "aws_request_id", None)


def _instance() -> dict[str, Any]:
    request_id = _lambda_request_id()
    return {"instance": request_id} if request_id else {}


@app.exception_handler(UnicodeDecodeError)  # type: ignore[untyped-decorator]
def _not_utf8(exc: UnicodeDecodeError) -> Response[str]:
    """A body (base64 in the event) that is not UTF-8 cannot be JSON: the caller's mistake."""
    return problems.validation_problem([{"loc": ["body"], "msg": "is not UTF-8 encoded JSON"}])


@app.exception_handler(psycopg.Error)  # type: ignore[untyped-decorator]
def _database_error(exc: psycopg.Error) -> Response[str]:
    """A driver error no store method translated: the connection is gone (503), or a bug."""
    if isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
        # A run holds the row (or the statement ran past its timeout): worth a retry.
        return problems.problem_response(
            503,
            "busy",
            "Busy",
            "the schedule is being processed; retry in a moment",
            headers={"Retry-After": "5"},
            **_instance(),
        )
    logger.error("request_failed", extra={"error_class": type(exc).__name__, "error": str(exc)})
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return problems.problem_response(
            503,
            "database-unavailable",
            "Database unavailable",
            "the database is unavailable",
            **_instance(),
        )
    return problems.problem_response(
        500, "internal", "Internal error", problems.INTERNAL_DETAIL, **_instance()
    )


@app.exception_handler(Exception)  # type: ignore[untyped-decorator]
def _unexpected(exc: Exception) -> Response[str]:
    """A bug: logged with its traceback, answered as a problem rather than a gateway 502."""
    logger.exception("request_failed_unexpectedly", extra={"error_class": type(exc).__name__})
    return problems.problem_response(
        500, "internal", "Internal error", problems.INTERNAL_DETAIL, **_instance()
    )


@app.not_found
def _no_route(exc: Exception) -> Response[str]:
    path = app.current_event.path
    return problems.problem_response(
        404, "no-such-route", "No such route", f"no route {app.current_event.http_method} {path}"
    )


@app.get("/openapi.json", include_in_schema=False)
def get_openapi() -> dict[str, Any]:
    return openapi_document()


@app.get(
    "/status",
    summary="The scheduler's health, as `flag-scheduler status` shows it",
    responses=responses(StatusOut),
)
def get_status() -> StatusOut:
    report = request.catalog().status(runtime.now())
    return StatusOut.from_report(report)


def lambda_handler(event: Mapping[str, Any], context: LambdaContext | None) -> dict[str, Any]:
    """API Gateway HTTP API entry point (payload format 2.0)."""
    return app.resolve(event, context)
