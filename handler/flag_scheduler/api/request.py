"""What a route handler reads of the request being handled: caller, ids, cursors, catalog."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from aws_lambda_powertools.event_handler.api_gateway import BaseRouter

from flag_scheduler.api import runtime
from flag_scheduler.api.auth import Caller, caller_of
from flag_scheduler.errors import FlagSchedulerError
from flag_scheduler.store.api_catalog import ApiCatalog, WriteTimeouts

# Actors longer than this are cut: an identity claim is not a place for a document.
MAX_ACTOR_LENGTH = 320


class BadParameter(FlagSchedulerError):
    """A request parameter is invalid."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def choices_in(text: str | None, field: str, allowed: Sequence[str]) -> list[str] | None:
    """The values of a comma-separated query parameter, each one of `allowed`; None when
    the parameter names none.

    Raises:
        BadParameter: naming `field` and the first value not allowed.
    """
    if text is None:
        return None
    values = [part.strip() for part in text.split(",") if part.strip()]
    for value in values:
        if value not in allowed:
            shown = value if len(value) <= 40 else f"{value[:37]}..."
            raise BadParameter(field, f"{shown!r} is not one of {', '.join(allowed)}")
    return values or None


def caller() -> Caller:
    """The caller of the request being handled (the resolver has already checked them)."""
    found = caller_of(BaseRouter.current_event.raw_event, runtime.settings())
    subject = _storable(found.subject)
    if len(subject) > MAX_ACTOR_LENGTH:
        # Cutting could make two subjects one; a digest keeps them apart at a bounded length.
        subject = "sha256:" + hashlib.sha256(subject.encode()).hexdigest()
    return Caller(
        actor=_storable(found.actor)[:MAX_ACTOR_LENGTH], scopes=found.scopes, subject=subject
    )


def _storable(text: str) -> str:
    """`text` as PostgreSQL text can hold it: no NUL, no lone surrogate."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def request_id() -> str | None:
    context = BaseRouter.current_event.raw_event.get("requestContext") or {}
    value = context.get("requestId")
    return _storable(str(value))[:200] if value else None


def write_timeouts() -> WriteTimeouts:
    """How long a write may wait for a row a run holds, or run: the configured timeouts
    (the scheduler's), for schedules and ramps alike."""
    settings = runtime.settings()
    return WriteTimeouts(
        lock_timeout_ms=settings.lock_timeout_ms,
        statement_timeout_ms=settings.statement_timeout_ms,
    )


def catalog() -> ApiCatalog:
    return ApiCatalog(
        runtime.connection(),
        request_id=request_id(),
        timeouts=write_timeouts(),
        idempotency_retention_seconds=runtime.settings().idempotency_retention_seconds,
    )


def encode_cursor(scheduled_at: datetime, schedule_id: UUID) -> str:
    """An opaque cursor for the position after (scheduled_at, id)."""
    raw = json.dumps({"at": scheduled_at.isoformat(), "id": str(schedule_id)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """Raises BadParameter when the cursor is not one this API issued."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        document = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        position = (datetime.fromisoformat(document["at"]), UUID(document["id"]))
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error):
        raise BadParameter("query.cursor", "is not a cursor this API issued") from None
    if position[0].tzinfo is None:
        raise BadParameter("query.cursor", "is not a cursor this API issued")
    return position


def request_hash(*parts: Any) -> str:
    """A digest of a request's meaning (path values and the validated body)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
